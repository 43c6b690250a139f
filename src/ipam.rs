//! The address pool and its on-disk store. Only this file touches the
//! store's files.
//!
//! Layout, under `<root>/netns-<host netns cookie>/<network>/`:
//!
//! ```text
//! lock               flock(2)ed around allocation and record creation (the
//!                    kernel drops it if we die); gc holds it while it runs
//! next-v4, next-v6   index of the last address handed out (a hint, not a truth)
//! addr/<ip>          a symlink whose target is "<sandbox>@<instance id>"
//! sandbox/<name>     the sandbox's record (key=value lines)
//! bridge-made-here   present if podnet made the bridge
//! ```
//!
//! Why symlinks: `symlink(2)` creates the link and its content in one atomic
//! step and fails with EEXIST if the name is taken, so two processes can never
//! both own an address, and a crash can never leave a half-written
//! reservation. Records are written to a temporary file first, then
//! published with `link(2)` (exclusive: a duplicate sandbox name fails).
//! The one later change, the holder and the addresses once the sandbox is
//! made, is filled into a fixed-width line with a check
//! (`done=PID:START,IPV4,IPV6,FNV`, blank until then) by one `pwrite`:
//! a crash leaves the record whole, with or without its holder, and a
//! reader that catches the line half-written sees the check fail and reads
//! again. The allocation cursor makes the next free address
//! one `symlink` away while the pool fills in order, as CNI host-local does.
//!
//! Files are created 0600 and opened with `O_NOFOLLOW`; directories are made
//! 0700 and must belong to us.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnetwork::IpNetwork;
use nix::fcntl::{Flock, FlockArg};
use nix::libc;
use nix::unistd::geteuid;

use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::names::{fnv1a, fnv1a_from};
use crate::paths::{ensure_private_dir, open_private};

/// An address pool: every address of `net` except the network address, the
/// gateway (the first address) and, for IPv4, the broadcast address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pool {
    net: IpNetwork,
    /// Where the allocation window may end (see [`Pool::with_regions`]).
    regions: Option<(u128, u128)>,
}

impl Pool {
    /// A pool for `net` (normalised to its network address). Refuses pools
    /// with no address left to hand out.
    pub(crate) fn new(net: IpNetwork) -> Result<Pool> {
        let (net, max_prefix) = match net {
            IpNetwork::V4(n) => (
                IpNetwork::V4(
                    ipnetwork::Ipv4Network::new(n.network(), n.prefix()).map_err(|e| {
                        Error::InvalidConfig {
                            reason: format!("pool {net}: {e}"),
                        }
                    })?,
                ),
                30,
            ),
            IpNetwork::V6(n) => (
                IpNetwork::V6(
                    ipnetwork::Ipv6Network::new(n.network(), n.prefix()).map_err(|e| {
                        Error::InvalidConfig {
                            reason: format!("pool {net}: {e}"),
                        }
                    })?,
                ),
                126,
            ),
        };
        if net.prefix() > max_prefix {
            return Err(Error::InvalidConfig {
                reason: format!(
                    "pool {net} is too small: it needs room for the network address, the \
                     gateway and at least one sandbox (a prefix of /{max_prefix} at most)"
                ),
            });
        }
        Ok(Pool { net, regions: None })
    }

    /// Hand addresses out from a window `[first, top)` of the pool that
    /// grows only when every address in it is taken: first to index
    /// `first_end`, then by `step` (to the next multiple of it). Without
    /// regions, the window is the whole pool. So the live sandboxes, not
    /// the creates so far, decide how far into the pool addresses go, and
    /// what the network decides by address (its shards, which sandboxes
    /// receive by NAPI) follows how many sandboxes there are.
    pub(crate) fn with_regions(mut self, first_end: u128, step: u128) -> Pool {
        self.regions = Some((first_end, step.max(1)));
        self
    }

    /// The end (exclusive) of the window that follows one ending at `top`.
    fn grow(&self, top: u128) -> u128 {
        let end = self.last().saturating_add(1);
        match self.regions {
            None => end,
            Some((first_end, _)) if top < first_end => first_end.min(end),
            Some((_, step)) => (top / step).saturating_add(1).saturating_mul(step).min(end),
        }
    }

    /// The smallest window that holds index `i` (and the first region).
    fn window_for(&self, i: u128) -> u128 {
        let end = self.last().saturating_add(1);
        let mut top = self.grow(self.first());
        while top <= i && top < end {
            top = self.grow(top);
        }
        top
    }

    pub(crate) fn network(&self) -> IpNetwork {
        self.net
    }

    pub(crate) fn prefix(&self) -> u8 {
        self.net.prefix()
    }

    /// The gateway: the first address after the network address.
    pub(crate) fn gateway(&self) -> IpAddr {
        self.nth(1)
    }

    /// Indexes that may be handed out: `first..=last`.
    fn first(&self) -> u128 {
        2
    }

    fn last(&self) -> u128 {
        let host_bits = u32::from(self.max_prefix() - self.net.prefix());
        let size = if host_bits >= 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        match self.net {
            IpNetwork::V4(_) => size - 1, // no broadcast
            IpNetwork::V6(_) => size,
        }
    }

    fn max_prefix(&self) -> u8 {
        match self.net {
            IpNetwork::V4(_) => 32,
            IpNetwork::V6(_) => 128,
        }
    }

    fn nth(&self, i: u128) -> IpAddr {
        match self.net {
            // Truncation is fine: i <= last() < 2^32 for an IPv4 pool.
            #[allow(clippy::cast_possible_truncation)]
            IpNetwork::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + i as u32)),
            IpNetwork::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + i)),
        }
    }

    /// The index of `addr` in the pool (the network address is 0).
    pub(crate) fn index_of(&self, addr: IpAddr) -> Option<u128> {
        match (self.net, addr) {
            (IpNetwork::V4(n), IpAddr::V4(a)) if n.contains(a) => {
                Some(u128::from(u32::from(a) - u32::from(n.network())))
            }
            (IpNetwork::V6(n), IpAddr::V6(a)) if n.contains(a) => {
                Some(u128::from(a) - u128::from(n.network()))
            }
            _ => None,
        }
    }

    /// Check that `addr` may be requested as a static address.
    pub(crate) fn check(&self, addr: IpAddr) -> Result<()> {
        let reason = match self.index_of(addr) {
            None => "it is outside the pool",
            Some(0) => "it is the network address",
            Some(1) => "it is the gateway",
            Some(i) if i > self.last() => "it is the broadcast address",
            Some(_) => return Ok(()),
        };
        Err(Error::AddressNotInPool {
            addr,
            pool: self.net,
            reason,
        })
    }

    fn family(&self) -> &'static str {
        match self.net {
            IpNetwork::V4(_) => "v4",
            IpNetwork::V6(_) => "v6",
        }
    }
}

/// What the store knows of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub name: String,
    /// Tells this sandbox from an earlier or later one of the same name;
    /// its addresses are reserved as `<name>@<id>`.
    pub id: String,
    /// The process that created it.
    pub creator: Ident,
    /// Its holder, once there is one.
    pub holder: Option<Ident>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// The host end of its veth pair.
    pub veth: String,
    /// Whether the holder outlives its creator.
    pub persistent: bool,
}

impl Record {
    /// What its address reservations point to.
    pub(crate) fn owner(&self) -> String {
        format!("{}@{}", self.name, self.id)
    }

    /// The record's text, and the hash of its head (everything before the
    /// `done=` line), which the done line's check continues.
    fn encode(&self) -> (String, u64) {
        let mut head = format!(
            "name={}\nid={}\ncreator={}:{}\nveth={}\npersistent={}\n",
            self.name,
            self.id,
            self.creator.pid,
            self.creator.start,
            self.veth,
            u8::from(self.persistent)
        );
        if let Some(a) = self.ipv4 {
            head += &format!("ipv4={a}\n");
        }
        if let Some(a) = self.ipv6 {
            head += &format!("ipv6={a}\n");
        }
        head += &format!("sum={}\n", check_hex(fnv1a(head.as_bytes())));
        let head_hash = fnv1a(head.as_bytes());
        // Always present and fixed-width, so that it can be filled in place
        // once the sandbox is made (see `Store::set_done`).
        let text = head + &self.done_line(head_hash);
        (text, head_hash)
    }

    /// Parse a record of the store of network (bridge) `network`, whose
    /// host-side interface names end with `-<tag>`; `path` is its file.
    ///
    /// The record's integrity: its `sum=` line is the FNV-1a 64 of every
    /// byte before it, and the check at the end of its `done=` line
    /// continues that hash over the head (up to the done line) and the
    /// line's value, so a change of any byte fails one of them. A done line
    /// whose check fails is reported as [`TORN`] (it may be being written);
    /// [`Store::read_record`] reads it again before it calls it damaged.
    fn decode(text: &str, path: &Path, network: &str, tag: &str) -> Result<Record> {
        let corrupt = |reason: String| Error::StateCorrupt {
            path: path.to_owned(),
            reason,
        };
        // `encode` always ends with the done line: without it, or without
        // its newline, the record was cut short, and must not be read as a
        // sandbox that is still being made (gc would reclaim it once its
        // creator is gone, live holder and all).
        let Some(body) = text.strip_suffix('\n') else {
            return Err(corrupt(
                "its last line has no newline: the record is cut short".into(),
            ));
        };
        let (head_len, last) = body
            .rsplit_once('\n')
            .map_or((0, body), |(h, l)| (h.len() + 1, l));
        let Some(done) = last.strip_prefix("done=") else {
            return Err(corrupt(
                "its done= line is missing: the record is cut short".into(),
            ));
        };
        // Fixed-width: shorter is a record cut short (a line being filled
        // in place keeps its width).
        if done.len() != DONE_WIDTH {
            return Err(corrupt(format!(
                "its done line is {} characters wide, not {DONE_WIDTH}: \
                 the record is cut short",
                done.len()
            )));
        }
        let head = &text[..head_len];
        let (fields, sum_line) = match head.strip_suffix('\n') {
            Some(h) => h
                .rsplit_once('\n')
                .map_or(("", h), |(f, l)| (&head[..f.len() + 1], l)),
            None => ("", ""),
        };
        let ident = |v: &str| -> Option<Ident> {
            let (p, s) = v.split_once(':')?;
            Some(Ident {
                pid: p.parse().ok()?,
                start: s.parse().ok()?,
            })
        };
        let (mut name, mut id, mut creator) = (None, None, None);
        let (mut ipv4, mut ipv6, mut veth, mut persistent) = (None, None, None, None);
        for line in fields.lines() {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| corrupt(format!("line {line:?} is not key=value")))?;
            let bad = || corrupt(format!("bad value for {k}: {v:?}"));
            match k {
                "name" => name = Some(v.to_owned()),
                "id" => id = Some(v.to_owned()),
                "creator" => creator = Some(ident(v).ok_or_else(bad)?),
                "ipv4" => ipv4 = Some(v.parse().map_err(|_| bad())?),
                "ipv6" => ipv6 = Some(v.parse().map_err(|_| bad())?),
                "veth" => veth = Some(v.to_owned()),
                "persistent" => match v {
                    "0" => persistent = Some(false),
                    "1" => persistent = Some(true),
                    _ => return Err(bad()),
                },
                // Keys of later versions are skipped, not refused (the
                // check covers them all the same).
                _ => {}
            }
        }
        let missing = |k: &str| corrupt(format!("{k} is missing"));
        let name = name.ok_or_else(|| missing("name"))?;
        // A record steers gc to a veth and addresses: it must be the record
        // of the file it is in.
        if path.file_name().and_then(|f| f.to_str()) != Some(name.as_str()) {
            return Err(corrupt(format!(
                "it names sandbox {name:?}, not its file's"
            )));
        }
        if let Err(e) = crate::names::validate_name(&name) {
            return Err(corrupt(format!(
                "its file's name is not a sandbox name: {e}"
            )));
        }
        // gc and remove() delete the interface of this name: it must be
        // the sandbox's own host end, never the bridge or another link.
        let veth = veth.ok_or_else(|| missing("veth"))?;
        let own = format!("{name}-{tag}");
        if veth != own || veth == network {
            return Err(corrupt(format!(
                "its veth {veth:?} is not {own:?}, the host end of sandbox {name:?} \
                 on network {network:?}"
            )));
        }
        // Last, so that the checks above name what is wrong where they can.
        if sum_line.strip_prefix("sum=") != Some(check_hex(fnv1a(fields.as_bytes())).as_str()) {
            return Err(corrupt(format!(
                "its content does not match its check ({sum_line:?}): \
                 the record was changed or damaged after it was written"
            )));
        }
        let done = parse_done(done, fnv1a(head.as_bytes())).map_err(|torn| match torn {
            true => corrupt(TORN.into()),
            false => corrupt(format!("bad done line: {done:?}")),
        })?;
        let mut holder = None;
        if let Some((h, v4, v6)) = done {
            holder = Some(h);
            ipv4 = v4.or(ipv4);
            ipv6 = v6.or(ipv6);
        }
        Ok(Record {
            name,
            id: id.ok_or_else(|| missing("id"))?,
            creator: creator.ok_or_else(|| missing("creator"))?,
            holder,
            ipv4,
            ipv6,
            veth,
            persistent: persistent.ok_or_else(|| missing("persistent"))?,
        })
    }
}

/// A record check as it is written: 16 lowercase hex digits. Checks are
/// compared as text, so that a digit changed to its other case fails too.
fn check_hex(h: u64) -> String {
    format!("{h:016x}")
}

/// Width of the value of a record's `done=` line,
/// `PID:START,IPV4,IPV6,CHECK` (at most 10 + 1 + 20 + 1 + 15 + 1 + 39 + 1 +
/// 16 characters, `-` for a missing address), padded with spaces; all
/// spaces until the sandbox is made.
const DONE_WIDTH: usize = 112;

/// Why a record was read as corrupt when its `done=` line fails its check:
/// it may be being written at that moment, so readers read it again.
const TORN: &str = "its done line is being written";

/// Why a record is corrupt whose `done=` line failed its check every time
/// it was read.
const DONE_DAMAGED: &str = "its done line does not match its check: \
                            the record was changed or damaged after it was written";

impl Record {
    /// `done=<value>\n`, `DONE_WIDTH` wide: the holder and the addresses,
    /// once there is a holder, checked by continuing `head_hash`.
    fn done_line(&self, head_hash: u64) -> String {
        let value = self.holder.map_or_else(String::new, |h| {
            let show = |a: Option<String>| a.unwrap_or_else(|| "-".into());
            let body = format!(
                "{}:{},{},{}",
                h.pid,
                h.start,
                show(self.ipv4.map(|a| a.to_string())),
                show(self.ipv6.map(|a| a.to_string())),
            );
            let check = check_hex(fnv1a_from(head_hash, body.as_bytes()));
            format!("{body},{check}")
        });
        format!("done={value:<DONE_WIDTH$}\n")
    }
}

/// What a `done=` line says.
type Done = (Ident, Option<Ipv4Addr>, Option<Ipv6Addr>);

/// The value of a `done=` line of a record whose head hashes to
/// `head_hash`: `Ok(None)` when blank, `Err(true)` when its check does not
/// match (a write in progress, or damage), `Err(false)` when it is
/// malformed.
fn parse_done(v: &str, head_hash: u64) -> std::result::Result<Option<Done>, bool> {
    let v = v.trim_end_matches(' ');
    if v.is_empty() {
        return Ok(None);
    }
    // A prefix of a value being written fails the check.
    let (body, check) = v.rsplit_once(',').ok_or(true)?;
    if check != check_hex(fnv1a_from(head_hash, body.as_bytes())) {
        return Err(true);
    }
    let mut parts = body.split(',');
    let (Some(holder), Some(v4), Some(v6), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(false);
    };
    let (pid, start) = holder.split_once(':').ok_or(false)?;
    let ident = Ident {
        pid: pid.parse().map_err(|_| false)?,
        start: start.parse().map_err(|_| false)?,
    };
    let v4 = match v4 {
        "-" => None,
        a => Some(a.parse().map_err(|_| false)?),
    };
    let v6 = match v6 {
        "-" => None,
        a => Some(a.parse().map_err(|_| false)?),
    };
    Ok(Some((ident, v4, v6)))
}

/// A record just published by [`Store::create_record`], still open, so
/// that its holder can be filled in without another lookup.
#[derive(Debug)]
pub(crate) struct RecordFile {
    file: File,
    done_at: u64,
    /// The hash of the record's head, which the done line's check continues.
    head_hash: u64,
}

/// Overwrite the cursor file with `i` as 39 digits (enough for any u128),
/// so the file never needs truncating.
fn write_cursor(file: &File, i: u128, top: u128) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(format!("{i:039} {top:039}").as_bytes(), 0)
}

/// The cursor and the end of the window in `file`, if it holds them.
fn read_cursor(file: &File) -> Option<(u128, u128)> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 79];
    let n = file.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let mut words = text.split_whitespace().map(str::parse::<u128>);
    Some((words.next()?.ok()?, words.next()?.ok()?))
}

fn io_err(op: &'static str, path: &Path, e: std::io::Error) -> Error {
    Error::io(op, path, e)
}

/// One network's store.
#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    network: String,
    /// The network's tag (see `NetInner::tag`): its sandboxes' host-side
    /// veths are `<name>-<tag>`, which records are checked against.
    tag: String,
    /// The cursor files (`next-v4`, `next-v6`), opened once: read and
    /// written with one `pread`/`pwrite` each, only under the lock.
    cursors: [std::sync::OnceLock<File>; 2],
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

    /// The store's directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir.join("sandbox").join(name)
    }

    fn addr_path(&self, addr: IpAddr) -> PathBuf {
        self.dir.join("addr").join(addr.to_string())
    }

    /// Write `content` to a new temporary file in the store and return its
    /// path and the file.
    fn write_temp(&self, content: &str) -> Result<(PathBuf, File)> {
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!(".tmp-{}-{seq}", std::process::id()));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
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
    /// transaction, ~10x this). A crash before or after the write leaves a
    /// whole record (not done, or done); a reader that meets the line half
    /// written sees its check fail and reads again.
    pub(crate) fn set_done(&self, file: &RecordFile, rec: &Record) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let line = rec.done_line(file.head_hash);
        file.file
            .write_all_at(&line.as_bytes()["done=".len()..], file.done_at + 5)
            .map_err(|e| io_err("write state file", &self.record_path(&rec.name), e))
    }

    /// Read a record; `None` if there is none of that name.
    pub(crate) fn read_record(&self, name: &str) -> Result<Option<Record>> {
        // A holder line caught half-written is read again: the write is
        // one pwrite of a few bytes, so it is over almost at once.
        let mut tries = 0;
        loop {
            match self.read_record_once(name) {
                Err(Error::StateCorrupt { reason, .. }) if reason == TORN && tries < 100 => {
                    tries += 1;
                    std::thread::yield_now();
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
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &f, &mut bytes)
            .map_err(|e| io_err("read state file", &path, e))?;
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

    /// Hold the store's lock. Contended only for the microseconds of an
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

    /// Reserve an address of `pool` for sandbox `owner`: `want` if given,
    /// else the next free one after the cursor.
    ///
    /// # Cancel safety
    /// Not cancel safe once the lock is held: the reservation may exist
    /// without the caller knowing it. The sandbox's record names the creator,
    /// so gc reclaims it.
    #[cfg_attr(not(any(test, feature = "internals")), allow(dead_code))]
    pub(crate) async fn allocate(
        &self,
        pool: &Pool,
        owner: &str,
        want: Option<IpAddr>,
    ) -> Result<IpAddr> {
        let _lock = self.lock().await?;
        self.allocate_locked(pool, owner, want)
    }

    /// [`allocate`](Store::allocate) for a caller that holds the lock.
    pub(crate) fn allocate_locked(
        &self,
        pool: &Pool,
        owner: &str,
        want: Option<IpAddr>,
    ) -> Result<IpAddr> {
        if let Some(addr) = want {
            pool.check(addr)?;
            return self.reserve(addr, owner);
        }
        let cursor_file = self.cursor_file(pool)?;
        let (first, end) = (pool.first(), pool.last().saturating_add(1));
        // A missing or garbled cursor starts over: the first address next.
        let (cursor, top) = read_cursor(cursor_file).unwrap_or((0, 0));
        let mut top = top.clamp(pool.grow(first), end);
        let mut i = if (first..top).contains(&cursor) {
            cursor
        } else {
            top - 1
        };
        // Next fit within the window, as host-local does in the whole pool
        // (a freed address is not handed out again at once).
        let mut taken: u128 = 0;
        loop {
            i = if i + 1 >= top { first } else { i + 1 };
            let addr = pool.nth(i);
            if self.try_reserve(addr, owner)? {
                // A stale cursor only costs a retry, so it is written in
                // place, fixed-width (no truncation: O_TRUNC costs a
                // journal transaction on ext4).
                let _ = write_cursor(cursor_file, i, top);
                return Ok(addr);
            }
            taken += 1;
            if taken >= top - first {
                if top >= end {
                    return Err(Error::PoolExhausted {
                        network: self.network.clone(),
                        pool: pool.network(),
                    });
                }
                // Every address of the window is taken: it grows by a
                // region, whose first address is next.
                i = top - 1;
                top = pool.grow(top);
            }
        }
    }

    /// Shrink the allocation window of `pool` to the smallest that holds
    /// every address in `reserved` (what gc found still reserved), so a
    /// network that shrank hands out low addresses again. Under the lock.
    pub(crate) fn fit_window(&self, pool: &Pool, reserved: &[IpAddr]) -> Result<()> {
        let cursor_file = self.cursor_file(pool)?;
        let Some((cursor, top)) = read_cursor(cursor_file) else {
            return Ok(());
        };
        let highest = reserved
            .iter()
            .filter_map(|a| pool.index_of(*a))
            .max()
            .unwrap_or(pool.first());
        let fit = pool.window_for(highest);
        if fit < top {
            let cursor = if cursor < fit { cursor } else { fit - 1 };
            write_cursor(cursor_file, cursor, fit).map_err(|e| {
                io_err(
                    "write cursor",
                    &self.dir.join(format!("next-{}", pool.family())),
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// The cursor file of `pool`'s family, opened on first use.
    fn cursor_file(&self, pool: &Pool) -> Result<&File> {
        let slot = &self.cursors[usize::from(pool.family() == "v6")];
        if let Some(f) = slot.get() {
            return Ok(f);
        }
        let path = self.dir.join(format!("next-{}", pool.family()));
        let f = open_private(&path).map_err(|e| io_err("open cursor file", &path, e))?;
        Ok(slot.get_or_init(|| f))
    }

    /// Reserve `addr` for `owner`; `false` if it is taken.
    fn try_reserve(&self, addr: IpAddr, owner: &str) -> Result<bool> {
        let path = self.addr_path(addr);
        match std::os::unix::fs::symlink(owner, &path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err("reserve address", &path, e)),
        }
    }

    /// Reserve `addr` for `owner`; [`Error::AddressTaken`] names who holds it.
    fn reserve(&self, addr: IpAddr, owner: &str) -> Result<IpAddr> {
        if self.try_reserve(addr, owner)? {
            return Ok(addr);
        }
        Err(Error::AddressTaken {
            addr,
            owner: fs::read_link(self.addr_path(addr))
                .map(|t| {
                    let t = t.to_string_lossy();
                    t.split('@').next().unwrap_or_default().to_owned()
                })
                .unwrap_or_default(),
        })
    }

    /// Release `addr` if `owner` holds it. A missing reservation is not an error.
    pub(crate) fn release(&self, addr: IpAddr, owner: &str) -> Result<()> {
        let path = self.addr_path(addr);
        match fs::read_link(&path) {
            Ok(target) if target.as_os_str() == owner => match fs::remove_file(&path) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    Err(io_err("release address", &path, e))
                }
                _ => Ok(()),
            },
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("read address reservation", &path, e)),
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

    /// Where the sandbox instance `owner` (`<name>@<id>`) keeps its pod
    /// volumes; made by the pod layer on demand.
    pub(crate) fn volumes_dir(&self, owner: &str) -> PathBuf {
        self.dir.join("volumes").join(owner)
    }

    /// Remove the volumes of `owner`, if it has any.
    pub(crate) fn remove_volumes(&self, owner: &str) -> Result<()> {
        let dir = self.volumes_dir(owner);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_err("remove pod volumes", &dir, e))
            }
            _ => Ok(()),
        }
    }

    /// The owners (`<name>@<id>`) that have a volumes directory.
    pub(crate) fn volume_owners(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("volumes");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", &dir, e)),
        };
        let mut owners = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("list", &dir, e))?;
            owners.push(entry.file_name().to_string_lossy().into_owned());
        }
        Ok(owners)
    }

    /// The path of a sandbox's record, for reports.
    pub(crate) fn record_file(&self, name: &str) -> PathBuf {
        self.record_path(name)
    }

    /// Every entry of `addr/`: normally a reserved address and its owner
    /// (`<name>@<id>`), but whatever is there is listed, for gc to report.
    pub(crate) fn reservations(&self) -> Result<Vec<AddrEntry>> {
        let dir = self.dir.join("addr");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_err("list", &dir, e))? {
            let entry = entry.map_err(|e| io_err("list", &dir, e))?;
            let path = entry.path();
            let addr = entry.file_name().to_str().and_then(|n| n.parse().ok());
            let target = match fs::read_link(&path) {
                Ok(t) => t
                    .into_os_string()
                    .into_string()
                    .map_err(|t| format!("it points to {t:?}, which is not UTF-8")),
                // EINVAL: not a symlink.
                Err(_) => Err(match fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() => "it is a directory, not a symlink to its owner".into(),
                    Ok(m) if m.is_file() => {
                        "it is a regular file, not a symlink to its owner".into()
                    }
                    Ok(_) => "it is not a symlink to its owner".into(),
                    Err(e) => format!("it cannot be read: {e}"),
                }),
            };
            out.push(AddrEntry { path, addr, target });
        }
        Ok(out)
    }
}

/// An entry of a store's `addr/` directory, as [`Store::reservations`]
/// found it.
#[derive(Debug)]
pub(crate) struct AddrEntry {
    pub path: PathBuf,
    /// The address its name is, if it is one.
    pub addr: Option<IpAddr>,
    /// What its symlink points to (the owner), or why it has no target.
    pub target: std::result::Result<String, String>,
}

/// The sandbox name and instance id of an owner (`<name>@<id>`), if it is
/// one this store writes: a sandbox name and an id of hex digits and `-`.
pub(crate) fn parse_owner(owner: &str) -> Option<(&str, &str)> {
    let (name, id) = owner.split_once('@')?;
    let id_ok =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    (id_ok && crate::names::validate_name(name).is_ok()).then_some((name, id))
}

/// The store, for this crate's benchmarks only (feature `internals`).
#[cfg(feature = "internals")]
pub(crate) mod internals {
    use super::*;

    /// One pool of one store.
    #[derive(Debug)]
    pub struct Ipam {
        store: Store,
        pool: Pool,
    }

    impl Ipam {
        /// Open the store of network `network` under `root`, with `pool`.
        pub fn open(root: &Path, network: &str, pool: IpNetwork) -> Result<Ipam> {
            Ok(Ipam {
                store: Store::open(root, "netns-bench", network)?,
                pool: Pool::new(pool)?,
            })
        }

        /// Allocate the next free address for `owner`.
        pub async fn allocate(&self, owner: &str) -> Result<IpAddr> {
            self.store.allocate(&self.pool, owner, None).await
        }

        /// Release `addr` held by `owner`.
        pub fn release(&self, addr: IpAddr, owner: &str) -> Result<()> {
            self.store.release(addr, owner)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap()).unwrap()
    }

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
        }
    }

    fn temp_root(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "podnet-ipam-{tag}-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn pool_bounds() {
        let p = pool("10.88.0.0/30");
        assert_eq!(p.gateway(), "10.88.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((p.first(), p.last()), (2, 2));
        assert!(Pool::new("10.88.0.0/31".parse().unwrap()).is_err());
        assert!(Pool::new("fd00:88::/127".parse().unwrap()).is_err());
        let p = pool("10.88.7.9/16");
        assert_eq!(p.network().to_string(), "10.88.0.0/16");
        assert!(p.check("10.88.0.0".parse().unwrap()).is_err());
        assert!(p.check("10.88.0.1".parse().unwrap()).is_err());
        assert!(p.check("10.88.255.255".parse().unwrap()).is_err());
        assert!(p.check("10.89.0.2".parse().unwrap()).is_err());
        assert!(p.check("fd00::2".parse().unwrap()).is_err());
        assert!(p.check("10.88.255.254".parse().unwrap()).is_ok());
        let p6 = pool("fd00:88::/64");
        assert!(p6
            .check("fd00:88::ffff:ffff:ffff:ffff".parse().unwrap())
            .is_ok());
    }

    #[test]
    fn record_round_trips_and_garbage_is_an_error_naming_the_file() {
        let rec = Record {
            name: "web".into(),
            id: "1-2-3".into(),
            creator: Ident { pid: 7, start: 99 },
            holder: Some(Ident { pid: 8, start: 100 }),
            ipv4: Some("10.88.0.2".parse().unwrap()),
            ipv6: None,
            veth: "web-k3".into(),
            persistent: false,
        };
        let p = Path::new("/x/sandbox/web");
        assert_eq!(
            Record::decode(&rec.encode().0, p, "br0", "k3").unwrap(),
            rec
        );
        for bad in ["", "garbage", "name=web\ncreator=x\n", "\u{0}\u{1}=\n"] {
            let err = Record::decode(bad, p, "br0", "k3").unwrap_err();
            assert!(matches!(err, Error::StateCorrupt { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains("/x/sandbox/web"));
        }
        // A veth that is not the sandbox's own host end: gc and remove()
        // would delete it.
        for veth in ["br0", "eth0", "web-k4", "api-k3", "web-k3x"] {
            let bad = Record {
                veth: veth.into(),
                ..rec.clone()
            };
            let err = Record::decode(&bad.encode().0, p, "br0", "k3").unwrap_err();
            assert!(
                matches!(&err, Error::StateCorrupt { reason, .. } if reason.contains("veth")),
                "{veth}: {err}"
            );
        }
        // Nor may a record's file be named what no sandbox can be.
        let bad = Record {
            name: "Web".into(),
            veth: "Web-k3".into(),
            ..rec.clone()
        };
        let err = Record::decode(&bad.encode().0, Path::new("/x/sandbox/Web"), "br0", "k3");
        assert!(matches!(err, Err(Error::StateCorrupt { .. })), "{err:?}");
        // Cut anywhere, done or not: corrupt, never a panic nor a record.
        let undone = Record {
            holder: None,
            ..rec.clone()
        };
        assert_eq!(
            Record::decode(&undone.encode().0, p, "br0", "k3").unwrap(),
            undone
        );
        for (text, _) in [rec.encode(), undone.encode()] {
            for cut in 0..text.len() {
                let err = Record::decode(&text[..cut], p, "br0", "k3").unwrap_err();
                assert!(matches!(err, Error::StateCorrupt { .. }), "{cut}: {err}");
            }
        }
    }

    /// A done and an undone record of sandbox "web", and their file.
    fn web_records() -> ([Record; 2], &'static Path) {
        let done = Record {
            name: "web".into(),
            id: "1f-2a-3".into(),
            creator: Ident { pid: 7, start: 99 },
            holder: Some(Ident { pid: 8, start: 100 }),
            ipv4: Some("10.88.0.2".parse().unwrap()),
            ipv6: Some("fd00:88::2".parse().unwrap()),
            veth: "web-k3".into(),
            persistent: true,
        };
        let undone = Record {
            holder: None,
            ipv4: None,
            ipv6: None,
            ..done.clone()
        };
        ([done, undone], Path::new("/x/sandbox/web"))
    }

    #[test]
    fn any_one_byte_replaced_inserted_or_deleted_makes_a_record_corrupt() {
        let (recs, p) = web_records();
        for rec in recs {
            let text = rec.encode().0.into_bytes();
            let decode = |b: &[u8]| {
                std::str::from_utf8(b)
                    .map_err(|_| ())
                    .and_then(|t| Record::decode(t, p, "br0", "k3").map_err(|_| ()))
            };
            assert_eq!(decode(&text), Ok(rec.clone()));
            for at in 0..text.len() {
                // Every other value at each position: flips, other case, NUL.
                for byte in 0..=u8::MAX {
                    if byte == text[at] {
                        continue;
                    }
                    let mut b = text.clone();
                    b[at] = byte;
                    assert!(decode(&b).is_err(), "byte {at} set to {byte:#x}");
                }
                for byte in [0, b' ', b'\n', b'0', b'a', b'='] {
                    let mut b = text.clone();
                    b.insert(at, byte);
                    assert!(decode(&b).is_err(), "{byte:#x} inserted at {at}");
                }
                let mut b = text.clone();
                b.remove(at);
                assert!(decode(&b).is_err(), "byte {at} deleted");
            }
            // Every line twice, and every two lines swapped.
            let lines: Vec<&[u8]> = text.split_inclusive(|c| *c == b'\n').collect();
            for i in 0..lines.len() {
                let mut twice = lines.clone();
                twice.insert(i, lines[i]);
                assert!(decode(&twice.concat()).is_err(), "line {i} twice");
                for j in i + 1..lines.len() {
                    let mut swapped = lines.clone();
                    swapped.swap(i, j);
                    assert!(
                        decode(&swapped.concat()).is_err(),
                        "lines {i} and {j} swapped"
                    );
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_are_never_a_record_and_never_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)
        ) {
            let (_, p) = web_records();
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let got = Record::decode(text, p, "br0", "k3");
                let corrupt = matches!(got, Err(Error::StateCorrupt { .. }));
                proptest::prop_assert!(corrupt, "{:?}", got);
            }
        }

        #[test]
        fn a_record_with_arbitrary_text_spliced_in_is_corrupt(
            which in 0usize..2,
            at in proptest::prelude::any::<usize>(),
            cut in 0usize..8,
            splice in "\\PC{0,12}",
        ) {
            let (recs, p) = web_records();
            let text = recs[which].encode().0;
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let end = (at + cut).min(text.len());
            let damaged = format!("{}{splice}{}", &text[..at], &text[end..]);
            proptest::prop_assume!(damaged != text);
            let got = Record::decode(&damaged, p, "br0", "k3");
            let corrupt = matches!(got, Err(Error::StateCorrupt { .. }));
            proptest::prop_assert!(corrupt, "{:?}: {:?}", damaged, got);
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn allocates_in_order_then_exhausts_then_reuses() {
        let root = temp_root("order");
        let store = Store::open(&root, "netns-test", "br0").unwrap();
        let p = pool("10.88.0.0/29"); // .2 ..= .6
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(store.allocate(&p, &format!("s{i}"), None).await.unwrap());
        }
        let want: Vec<IpAddr> = (2..=6)
            .map(|i| format!("10.88.0.{i}").parse().unwrap())
            .collect();
        assert_eq!(got, want);
        let err = store.allocate(&p, "s5", None).await.unwrap_err();
        assert!(matches!(err, Error::PoolExhausted { .. }), "{err}");
        store.release(want[2], "s2").unwrap();
        assert_eq!(store.allocate(&p, "s6", None).await.unwrap(), want[2]);
        // Releasing with the wrong owner leaves the reservation alone.
        store.release(want[0], "nobody").unwrap();
        let err = store.allocate(&p, "s7", Some(want[0])).await.unwrap_err();
        assert!(
            matches!(err, Error::AddressTaken { ref owner, .. } if owner == "s0"),
            "{err}"
        );
        assert_eq!(store.reservations().unwrap().len(), 5);
        fs::remove_dir_all(&root).unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_window_grows_only_when_full_and_gc_shrinks_it() {
        let root = temp_root("window");
        let store = Store::open(&root, "netns-test", "br0").unwrap();
        // Window [2, 5), then [2, 10), then [2, 15) ...
        let p = pool("10.88.0.0/24").with_regions(5, 5);
        let ip = |i: u8| -> IpAddr { format!("10.88.0.{i}").parse().unwrap() };
        for (i, owner) in ["a", "b", "c"].iter().enumerate() {
            let got = store.allocate(&p, owner, None).await.unwrap();
            assert_eq!(got, ip(2 + u8::try_from(i).unwrap()));
        }
        // A freed address is handed out again before the window grows, as
        // often as creates and removes come and go.
        let mut owner = "b".to_owned();
        for round in 0..20 {
            store.release(ip(3), &owner).unwrap();
            owner = format!("r{round}");
            assert_eq!(store.allocate(&p, &owner, None).await.unwrap(), ip(3));
        }
        // Full: the next region, from its first address.
        assert_eq!(store.allocate(&p, "d", None).await.unwrap(), ip(5));
        assert_eq!(store.allocate(&p, "e", None).await.unwrap(), ip(6));
        // Back down to two addresses: gc fits the window again, and the
        // next address is low.
        store.release(ip(5), "d").unwrap();
        store.release(ip(6), "e").unwrap();
        store.release(ip(3), &owner).unwrap();
        let reserved: Vec<IpAddr> = store
            .reservations()
            .unwrap()
            .into_iter()
            .filter_map(|e| e.addr)
            .collect();
        store.fit_window(&p, &reserved).unwrap();
        assert_eq!(store.allocate(&p, "f", None).await.unwrap(), ip(3));
        // Without regions the window is the whole pool: next fit goes on.
        let whole = pool("10.88.0.0/24");
        assert_eq!(store.allocate(&whole, "g", None).await.unwrap(), ip(5));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn concurrent_threads_never_share_an_address() {
        let root = temp_root("threads");
        let store = std::sync::Arc::new(Store::open(&root, "netns-test", "br0").unwrap());
        let p = pool("10.88.0.0/24");
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    (0..25)
                        .map(|i| {
                            rt.block_on(store.allocate(&p, &format!("t{t}-{i}"), None))
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<IpAddr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 200);
        assert_eq!(distinct.len(), 200);
        fs::remove_dir_all(&root).unwrap();
    }

    /// Run by `eight_processes_never_share_an_address` in child processes.
    #[test]
    #[ignore = "run by another test as a child process"]
    fn allocating_child() {
        let (Ok(root), Ok(count), Ok(tag)) = (
            std::env::var("PODNET_ALLOC_ROOT"),
            std::env::var("PODNET_ALLOC_COUNT"),
            std::env::var("PODNET_ALLOC_TAG"),
        ) else {
            return;
        };
        let store = Store::open(Path::new(&root), "netns-test", "br0").unwrap();
        let p = pool("10.88.0.0/16");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut out = String::new();
        for i in 0..count.parse::<usize>().unwrap() {
            let addr = rt
                .block_on(store.allocate(&p, &format!("{tag}-{i}"), None))
                .unwrap();
            out += &format!("addr={addr}\n");
        }
        print!("{out}");
    }

    #[test]
    fn eight_processes_never_share_an_address() {
        let root = temp_root("procs");
        Store::open(&root, "netns-test", "br0").unwrap();
        let children: Vec<_> = (0..8)
            .map(|t| {
                std::process::Command::new(std::env::current_exe().unwrap())
                    .args([
                        "ipam::tests::allocating_child",
                        "--exact",
                        "--ignored",
                        "--nocapture",
                    ])
                    .env("PODNET_ALLOC_ROOT", &root)
                    .env("PODNET_ALLOC_COUNT", "60")
                    .env("PODNET_ALLOC_TAG", format!("p{t}"))
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut all = Vec::new();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success());
            let text = String::from_utf8(out.stdout).unwrap();
            let mine: Vec<IpAddr> = text
                .split("addr=")
                .skip(1)
                .map(|s| s.split_whitespace().next().unwrap().parse().unwrap())
                .collect();
            assert_eq!(mine.len(), 60);
            all.extend(mine);
        }
        let distinct: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 480);
        assert_eq!(distinct.len(), 480, "an address was handed out twice");
        let store = Store::open(&root, "netns-test", "br0").unwrap();
        assert_eq!(store.reservations().unwrap().len(), 480);
        // Dense: the 480 addresses are exactly the first 480 of the pool.
        let p = pool("10.88.0.0/16");
        let want: HashSet<IpAddr> = (2..482).map(|i| p.nth(i)).collect();
        assert_eq!(distinct.into_iter().copied().collect::<HashSet<_>>(), want);
        fs::remove_dir_all(&root).unwrap();
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
        // Blank is not done yet; a malformed value is corrupt, not torn.
        let h = 0x1234_5678_9abc_def0;
        assert_eq!(parse_done(&" ".repeat(DONE_WIDTH), h), Ok(None));
        let body = "12:34,10.88.0.2,-";
        let good = format!("{body},{}", check_hex(fnv1a_from(h, body.as_bytes())));
        // The check continues the head's hash: under another head it fails.
        assert_eq!(parse_done(&good, h ^ 1), Err(true));
        assert_eq!(
            parse_done(&good, h),
            Ok(Some((
                Ident { pid: 12, start: 34 },
                Some(Ipv4Addr::new(10, 88, 0, 2)),
                None
            )))
        );
        let bad = "1x:34,-,-";
        let bad = format!("{bad},{}", check_hex(fnv1a_from(h, bad.as_bytes())));
        assert_eq!(parse_done(&bad, h), Err(false));
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
