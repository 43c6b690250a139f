//! The network's policies as its users see them: apply one (add or
//! replace by name), delete one, list them. Kept in the store, for every
//! process of the network; made to hold by `host::policy`.

use crate::error::Result;
use crate::network::Network;
use crate::policy::Policy;

impl Network {
    /// Apply `policy` to the network, replacing the policy of its name if
    /// there is one: in force for every sandbox of every process of the
    /// network when this returns, and for sandboxes made later. It lasts
    /// until [`delete_policy`](Network::delete_policy) or the network's
    /// [`remove`](Network::remove), whichever process made it; the process
    /// that applied it may exit.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for a policy
    /// the network cannot hold (an address block of a family it has no
    /// pool of; nothing is changed); [`Error::Netlink`](crate::Error::Netlink)
    /// if the kernel refuses the rules (the store is put back);
    /// [`Error::StateCorrupt`](crate::Error::StateCorrupt) if the store's
    /// policies file is damaged.
    pub async fn apply_policy(&self, policy: &Policy) -> Result<()> {
        let inner = &self.inner;
        policy.check_for(inner.v4.is_some(), inner.v6.is_some())?;
        let _lock = inner.store.lock().await?;
        let old = inner.store.read_policies()?;
        let mut new = old.clone();
        match new.iter_mut().find(|p| p.name() == policy.name()) {
            Some(p) => *p = policy.clone(),
            None => new.push(policy.clone()),
        }
        self.replace_policies(&old, &new).await
    }

    /// Delete policy `name`; whether there was one. Sandboxes it alone
    /// isolated take everything again when this returns.
    ///
    /// # Errors
    /// As [`apply_policy`](Network::apply_policy).
    pub async fn delete_policy(&self, name: &str) -> Result<bool> {
        let inner = &self.inner;
        let _lock = inner.store.lock().await?;
        let old = inner.store.read_policies()?;
        let new: Vec<Policy> = old.iter().filter(|p| p.name() != name).cloned().collect();
        if new.len() == old.len() {
            return Ok(false);
        }
        self.replace_policies(&old, &new).await?;
        Ok(true)
    }

    /// The network's policies, as the store holds them now.
    ///
    /// # Errors
    /// [`Error::StateCorrupt`](crate::Error::StateCorrupt) if the
    /// policies file is damaged; [`Error::Io`](crate::Error::Io) if it
    /// cannot be read.
    pub fn policies(&self) -> Result<Vec<Policy>> {
        self.inner.store.read_policies()
    }

    /// Under the store's lock: write `new` to the store, make the kernel
    /// hold it, and put `old` back in the store if the kernel refuses.
    async fn replace_policies(&self, old: &[Policy], new: &[Policy]) -> Result<()> {
        let inner = &self.inner;
        inner.store.write_policies(new)?;
        let installed = match inner.bridges_call_netfilter().await {
            Ok(()) => inner.install_policies(new),
            Err(e) => Err(e),
        };
        if let Err(e) = installed {
            let _ = inner.store.write_policies(old);
            return Err(e);
        }
        Ok(())
    }
}
