//! Removing a sandbox: port mappings ended, the veth unplugged (deleted in
//! the background) or deleted at once, the holder ended, the addresses,
//! volumes and record released; and `remove_on_drop`'s removal in `Drop`.

use std::net::IpAddr;
use std::os::fd::AsFd;

use super::{Sandbox, SbInner, State};
use crate::error::{Error, Result};
use crate::host::deletions;
use crate::ident::creator;
use crate::ipam::Volumes;
use crate::link::{self, Unplugged};
use crate::netns;
use crate::ports;

impl Sandbox {
    /// Remove the sandbox: delete the veth pair, release the address(es)
    /// and the state, and stop the holder. Idempotent, and fine on a Failed
    /// sandbox. The name and the address can be used again when it returns.
    ///
    /// The veth pair is not waited for: nearly all of the kernel's deletion
    /// of one is a wait for the network stack to let go. It is taken off
    /// the bridge, set down (so the sandbox's `eth0` has no carrier and
    /// nothing reaches it or leaves it) and renamed
    /// `<tag>~<12 hex digits>` before this returns, then deleted in the
    /// background, in one kernel operation with the other removals' veths
    /// that queued meanwhile. [`Network::remove`](crate::Network::remove)
    /// waits for those deletions; [`Network::gc`](crate::Network::gc)
    /// deletes any that a process did not live to finish.
    ///
    /// A holder that dies with this process (not
    /// [`persistent`](crate::SandboxBuilder::persistent)) is killed and
    /// reaped in the background, in a batch with those of other removals
    /// (`release::IDLE` after the last one, or once `release::BATCH` are
    /// waiting). So it may still run, in a
    /// namespace with `lo` and an `eth0` without carrier until its veth is
    /// deleted, when this returns; ending each at once would have the kernel
    /// destroy their namespaces one by one, in the way of the veth deletions
    /// (docs/architecture.md, "Removal"). Any other holder is stopped before
    /// this returns.
    ///
    /// Processes that joined the sandbox are not killed; they are left with
    /// a namespace whose `eth0` has no carrier, and then only `lo`.
    ///
    /// # Errors
    /// Every step is attempted; if any fails, [`Error::Multiple`] lists them
    /// all and the sandbox stays as it was for the steps that failed (call
    /// `remove` again; but not for the veth, once the record is released:
    /// it is left to the end of the namespace, or to `gc`). A veth whose
    /// deletion in the background fails is deleted again by
    /// [`Network::remove`](crate::Network::remove) (or `gc`), which reports
    /// it only if that fails too. Objects already gone count as removed. Port
    /// mappings are the exception: they end whatever happens, and kernel
    /// rules that could not be deleted are left to
    /// [`gc`](crate::Network::gc) or to the end of the process, which takes
    /// its table with it.
    ///
    /// # Cancel safety
    /// Each step is idempotent: a cancelled remove can be run again.
    pub async fn remove(&self) -> Result<()> {
        self.inner.remove().await
    }

    /// [`remove`](Self::remove), the veth deleted before this returns: for
    /// rollbacks, which leave the host as they found it.
    pub(crate) async fn remove_now(&self) -> Result<()> {
        self.inner.remove_now().await
    }
}

/// When a removal's veth is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deletion {
    /// Before the removal returns.
    Now,
    /// In the background, once it is off the bridge, down and renamed.
    Background,
}

impl SbInner {
    async fn remove(&self) -> Result<()> {
        self.remove_with(Deletion::Background).await
    }

    /// [`remove`](Self::remove), the veth deleted before this returns
    /// (a rollback leaves the host as it found it).
    pub(crate) async fn remove_now(&self) -> Result<()> {
        self.remove_with(Deletion::Now).await
    }

    async fn remove_with(&self, deletion: Deletion) -> Result<()> {
        let span = tracing::info_span!("podnet.remove", sandbox = %self.name);
        tracing::Instrument::instrument(self.remove_traced(deletion), span).await
    }

    async fn remove_traced(&self, deletion: Deletion) -> Result<()> {
        {
            let mut state = self.lock_state();
            match *state {
                State::Removed => return Ok(()),
                State::Running => *state = State::Removing,
                State::Failed(_) | State::Removing => {}
            }
        }
        // Port mappings first, so no new connection is forwarded to a
        // sandbox being taken down; returns once their sockets are closed.
        let mut errors: Vec<Error> = ports::end_all(&self.net.ports, &self.id)
            .await
            .err()
            .into_iter()
            .collect();
        // The veth is touched only while the name is still ours (it is
        // found by name unless this handle made it): a stale handle must
        // not take down a later sandbox of the same name. (Ours then goes
        // with our holder's namespace.)
        let ours = self.record_is_ours();
        if ours && deletion == Deletion::Now {
            let object = format!("veth {} of sandbox {:?}", self.veth, self.name);
            if let Err(e) = link::delete_link(&self.net.conn.handle, &self.veth, &object).await {
                errors.push(e);
            }
        } else if ours {
            // Off the bridge, down and renamed now; deleted in the background.
            let object = format!("veth {} of sandbox {:?}", self.veth, self.name);
            let h = &self.net.conn.handle;
            let deleted = match self.unplug(&object) {
                Ok(Unplugged::Renamed | Unplugged::Gone) => Ok(()),
                // Then it is deleted now, as it is.
                Ok(Unplugged::Stuck(index)) => {
                    link::delete_link_index(h, index, &object).await.map(drop)
                }
                Err(e) => match link::delete_link(h, &self.veth, &object).await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(e),
                },
            };
            errors.extend(deleted.err());
        }
        // The namespace, and a holder that dies with this process anyway,
        // outlive the removal for a moment (release::later): namespaces are
        // destroyed in batches, and no holder's exit is in the way of the
        // veth deletions. Any other holder is ended now.
        let what = format!("sandbox {:?}", self.name);
        let ns = netns::netns_of(self.holder.pidfd().as_fd(), &what).ok();
        let later = self.holder.end_later();
        if later.is_none() {
            let ended = match self.holder.kill() {
                Ok(()) => self.holder.wait().await,
                Err(e) => Err(e),
            };
            match ended {
                Ok(exit) => {
                    self.record_exit(exit);
                }
                Err(e) => errors.push(e),
            }
        }
        errors.extend(self.release_policy_and_state().await.err());
        crate::release::later(ns, later);
        if errors.is_empty() {
            *self.lock_state() = State::Removed;
            Ok(())
        } else {
            Err(Error::Multiple {
                op: format!("remove sandbox {:?}", self.name),
                errors,
            })
        }
    }

    /// Whether the store's record of this name is still this sandbox's.
    fn record_is_ours(&self) -> bool {
        matches!(self.net.store.read_record(&self.name), Ok(Some(r)) if r.id == self.id)
    }

    /// Take the veth off the bridge, down and renamed (one blocking
    /// request), and queue its deletion by the new name.
    fn unplug(&self, object: &str) -> Result<Unplugged> {
        let dying = deletions::dying_name(&self.net.tag);
        let alias = deletions::dying_alias(creator()?);
        let mut nl = self.net.host_nl()?;
        let unplugged =
            link::unplug_blocking(&mut nl, &self.veth, self.veth_index, &dying, &alias, object)?;
        if unplugged == Unplugged::Renamed {
            let object = format!(
                "veth {dying} (was {}) of removed sandbox {:?}",
                self.veth, self.name
            );
            self.net.deletions.later(&self.net, dying, object);
        }
        Ok(unplugged)
    }

    /// Take the sandbox out of the network's policy sets, then release its
    /// state, under the store's lock: a policy change of another process
    /// then sees the sandbox with its elements or neither, and no new
    /// sandbox has its address yet when its elements go.
    async fn release_policy_and_state(&self) -> Result<()> {
        let _lock = self.net.store.lock().await?;
        let left = self.leave_policies();
        let released = self.release_state();
        left.and(released)
    }

    /// Delete its addresses from the network's policy sets.
    fn leave_policies(&self) -> Result<()> {
        let owner = format!("{}@{}", self.name, self.id);
        let labels = self.net.store.read_labels(&owner).unwrap_or_default();
        self.net
            .policy_update(Some((&self.addresses(), &labels)), None)
    }

    /// Release the record, then the address(es); synchronous and quick.
    /// The record goes first, so that no reader of the store (the DNS
    /// servers of every process) ever sees this name with an address that
    /// a new sandbox may already have; a crash in between leaves
    /// reservations of no record, which gc releases.
    fn release_state(&self) -> Result<()> {
        let store = &self.net.store;
        let owner = format!("{}@{}", self.name, self.id);
        let mut errors: Vec<Error> = store
            .remove_record_if(&self.name, &self.id)
            .err()
            .into_iter()
            .collect();
        let ips = self
            .ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6));
        errors.extend(ips.filter_map(|ip| store.release(ip, &owner).err()));
        errors.extend(Volumes::of(store.dir()).remove(&owner).err());
        errors.extend(store.remove_labels(&owner).err());
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Multiple {
                op: format!("release state of sandbox {:?}", self.name),
                errors,
            }),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.remove_on_drop || *self.inner.lock_state() == State::Removed {
            return;
        }
        // Nothing here may wait: take the veth off the bridge (one quick
        // request; its deletion goes to the background) if there is a
        // runtime for that, then kill, release the files, and leave the
        // rest (an await) to a task. Without a runtime, the veth goes with
        // the holder's namespace. (Unplugged first, as remove() does: once
        // the holder is killed, the kernel may delete the veth with the
        // namespace before it is renamed and queued.)
        let inner = &self.inner;
        let rt = tokio::runtime::Handle::try_current();
        if rt.is_ok() && inner.record_is_ours() {
            let object = format!("veth {} of sandbox {:?}", inner.veth, inner.name);
            let _ = inner.unplug(&object);
        }
        let _ = inner.holder.kill();
        ports::abort_all(&inner.net.ports, &inner.id);
        // Without the store's lock (a drop may not wait for it): gc puts
        // the policy table right if a policy change raced with this.
        let _ = inner.leave_policies();
        let _ = inner.release_state();
        match rt {
            Ok(rt) => {
                let inner = inner.clone();
                rt.spawn(async move { inner.remove().await });
            }
            Err(_) => *inner.lock_state() = State::Removed,
        }
    }
}
