//! Keeping a zone fresh: every record of the store that is done and whose
//! holder lives, followed through an inotify watch on the records'
//! directory and a pidfd per holder, all in one epoll set. `sync` takes
//! what happened since in one `epoll_wait` that does not block, so a query
//! answered after a removal or a holder's death returned never sees it.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::unistd::Pid;

use super::zone::{Entry, Zone};
use crate::error::{Error, Result};
use crate::ipam::Store;

/// The epoll token of the inotify fd; holders' tokens are above it.
const INOTIFY: u64 = 0;

/// A zone and what keeps it fresh.
#[derive(Debug)]
pub(crate) struct Live {
    pub zone: Zone,
    store: Store,
    inotify: Inotify,
    epoll: Epoll,
    /// Live holders by token: their sandbox and pidfd.
    holders: HashMap<u64, (String, OwnedFd)>,
    tokens: HashMap<String, u64>,
    next_token: u64,
}

impl Live {
    /// Watch `store`'s records and load them all.
    pub(crate) fn new(store: Store, zone: Zone) -> Result<Live> {
        let dir = store.records_dir();
        let sys = |op: &'static str, e: Errno| Error::sys(op, dir.display().to_string(), e);
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| sys("inotify_init", e))?;
        inotify
            .add_watch(
                &dir,
                AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_MODIFY
                    | AddWatchFlags::IN_ATTRIB
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_DELETE_SELF,
            )
            .map_err(|e| sys("inotify_add_watch", e))?;
        let epoll =
            Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(|e| sys("epoll_create", e))?;
        epoll
            .add(
                inotify.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, INOTIFY),
            )
            .map_err(|e| sys("epoll_ctl", e))?;
        let mut live = Live {
            zone,
            store,
            inotify,
            epoll,
            holders: HashMap::new(),
            tokens: HashMap::new(),
            next_token: INOTIFY + 1,
        };
        live.reload();
        Ok(live)
    }

    /// An fd that is readable when something changed (for the server's
    /// reactor): the epoll set's, duplicated.
    pub(crate) fn fd(&self) -> std::io::Result<OwnedFd> {
        self.epoll.0.try_clone()
    }

    /// Take in every change since the last call, without blocking.
    pub(crate) fn sync(&mut self) {
        let mut events = [EpollEvent::empty(); 64];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::ZERO) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            for ev in &events[..n] {
                match ev.data() {
                    INOTIFY => self.take_inotify(),
                    token => {
                        if let Some((name, _)) = self.holders.remove(&token) {
                            tracing::debug!(sandbox = %name, "dns: holder exited");
                            self.tokens.remove(&name);
                            self.zone.remove(&name);
                        }
                    }
                }
            }
            if n < events.len() {
                return;
            }
        }
    }

    fn take_inotify(&mut self) {
        loop {
            let events = match self.inotify.read_events() {
                Ok(ev) => ev,
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            if events.is_empty() {
                return;
            }
            let mut names: Vec<String> = Vec::new();
            for ev in events {
                if ev
                    .mask
                    .intersects(AddWatchFlags::IN_Q_OVERFLOW | AddWatchFlags::IN_IGNORED)
                {
                    // Events were lost (or the directory went): read all.
                    self.reload();
                    names.clear();
                    continue;
                }
                if let Some(name) = ev.name.and_then(|n| n.into_string().ok()) {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
            }
            for name in names {
                self.refresh(&name);
            }
        }
    }

    /// Read every record again.
    fn reload(&mut self) {
        self.zone.clear();
        self.holders.clear();
        self.tokens.clear();
        for name in self.store.sandbox_names().unwrap_or_default() {
            self.refresh(&name);
        }
    }

    /// Read sandbox `name`'s record again: in the zone if it is done and
    /// its holder lives, else out.
    fn refresh(&mut self, name: &str) {
        if let Some(token) = self.tokens.remove(name) {
            self.holders.remove(&token);
        }
        self.zone.remove(name);
        if crate::names::validate_name(name).is_err() {
            return;
        }
        let Ok(Some(rec)) = self.store.read_record(name) else {
            return;
        };
        // An attachment is in while its record is done: its namespace is
        // the runtime's, and DEL or gc removes the record.
        if rec.attached.as_ref().is_some_and(|a| a.done) {
            self.zone.insert(Entry {
                name: rec.name,
                named: false,
                aliases: rec.aliases,
                ipv4: rec.ipv4,
                ipv6: rec.ipv6,
            });
            return;
        }
        let Some(holder) = rec.holder else {
            return;
        };
        let Ok(Some(pidfd)) = crate::holder::pidfd_of(Pid::from_raw(holder.pid), holder.start)
        else {
            return;
        };
        let token = self.next_token;
        self.next_token += 1;
        if self
            .epoll
            .add(pidfd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
            .is_err()
        {
            return;
        }
        self.holders.insert(token, (rec.name.clone(), pidfd));
        self.tokens.insert(rec.name.clone(), token);
        self.zone.insert(Entry {
            name: rec.name,
            named: true,
            aliases: rec.aliases,
            ipv4: rec.ipv4,
            ipv6: rec.ipv6,
        });
    }
}
