//! Address reservations in a store: next-fit allocation within the
//! pool's window (with its cursor file), reserving a requested address,
//! releasing one, and listing `addr/` for gc.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::IpAddr;
use std::path::PathBuf;

use super::pool::Pool;
use super::store::{io_err, Store};
use crate::error::{Error, Result};
use crate::paths::open_private;

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

impl Store {
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

    /// Every entry of `addr/`: normally a reserved address and its owner
    /// (`<name>@<id>`), but whatever is there is listed, for gc to report.
    pub(crate) fn reservations(&self) -> Result<Vec<AddrEntry>> {
        let dir = self.dir.join("addr");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| io_err("list", &dir, e))? {
            let entry = entry.map_err(|e| io_err("list", &dir, e))?;
            let path = entry.path();
            // Only the address's own spelling: release() removes that path.
            let addr = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok().filter(|a| a.to_string() == n));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::store::tests::temp_root;
    use std::collections::HashSet;
    use std::path::Path;

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap()).unwrap()
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
                        "ipam::alloc::tests::allocating_child",
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
}
