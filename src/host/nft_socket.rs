//! The nf_tables sockets a network keeps for its tables in the host
//! namespace (the egress table, the attachments' port table, the policy
//! table): each opened once, from inside that namespace, on first use,
//! then lent to a blocking thread for each request.

use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::host::NetInner;
use crate::link::nft::Nft;
use crate::netns;

impl NetInner {
    /// Run `f` on a blocking thread with the socket kept in `slot`, opened
    /// with `open` in the host namespace if it is not yet; `op` and the
    /// table's name `table` say what failed in errors.
    pub(super) async fn with_host_nft<T: Send + 'static>(
        &self,
        slot: &Mutex<Option<Arc<Nft>>>,
        open: fn(&str) -> Result<Nft>,
        op: &'static str,
        table: String,
        f: impl FnOnce(&Nft) -> std::result::Result<T, Errno> + Send + 'static,
    ) -> Result<T> {
        let object = format!("table inet {table} of network {:?}", self.bridge);
        let nft = self.host_nft(slot, open)?;
        tokio::task::spawn_blocking(move || f(&nft))
            .await
            .unwrap_or(Err(Errno::EINTR))
            .map_err(|errno| nft_error(op, object, errno))
    }

    /// The socket kept in `slot`, opened with `open` in the host namespace
    /// (this thread enters it for the call) if it is not yet.
    pub(super) fn host_nft(
        &self,
        slot: &Mutex<Option<Arc<Nft>>>,
        open: fn(&str) -> Result<Nft>,
    ) -> Result<Arc<Nft>> {
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(nft) = &*slot {
            return Ok(nft.clone());
        }
        let what = format!("host namespace of network {:?}", self.bridge);
        let nft = {
            let _host = netns::enter(self.host_ns.as_fd(), &what)?;
            Arc::new(open(&self.bridge)?)
        };
        *slot = Some(nft.clone());
        Ok(nft)
    }
}

/// The error of nf_tables operation `op` on `object` that failed with
/// `errno`: EPERM and EACCES are [`Error::NotPermitted`].
pub(super) fn nft_error(op: &'static str, object: String, errno: Errno) -> Error {
    match errno {
        Errno::EPERM | Errno::EACCES => Error::not_permitted(format!("{op} {object}")),
        errno => Error::Netlink { op, object, errno },
    }
}
