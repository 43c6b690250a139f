//! The network's policies in the kernel: the store's policies file says
//! what they are, the policy table (`link::nft`'s `inet
//! podnet-<bridge>-policy`) makes them hold. A policy change rebuilds the
//! table in one batch from the store; a sandbox made, removed or
//! relabelled only adds and deletes its addresses in the table's sets.
//! Everything here runs under the store's lock, so the table follows the
//! store in the order the changes were made, whichever process made them.

use nix::errno::Errno;
use std::collections::BTreeMap;
use std::net::IpAddr;

use super::nft_socket::nft_error;
use crate::error::{Error, Result};
use crate::host::NetInner;
use crate::link::nft::{policy_table, refused, Nft};
use crate::policy::plan::{self, set_name};
use crate::policy::{Labels, Policy};

impl NetInner {
    /// Run `f` with the nf_tables socket of the policy table (opened in
    /// the host namespace when first used), on this thread: each call is
    /// one batch, answered at once.
    fn with_policy_nft<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Nft, &str) -> std::result::Result<T, Errno>,
    ) -> Result<T> {
        let nft = self.host_nft(&self.policy_nft, Nft::open)?;
        f(&nft, &self.bridge).map_err(|errno| {
            let object = format!(
                "table inet {} of network {:?}",
                policy_table(&self.bridge),
                self.bridge
            );
            nft_error(op, object, errno)
        })
    }

    /// Have every bridge of the network call netfilter for what it
    /// forwards (`link::call_netfilter`): policies must see pod-to-pod
    /// traffic even where `net.bridge.bridge-nf-call-iptables` is off.
    /// Left on once policies are gone (it changes no verdict).
    pub(crate) async fn bridges_call_netfilter(&self) -> Result<()> {
        for (_, index, name) in self.all_bridges().await? {
            crate::link::call_netfilter(&self.conn.handle, index, &name).await?;
        }
        Ok(())
    }

    /// The sandboxes and attachments the policies apply to: every
    /// finished record's addresses, with its labels (a damaged labels file
    /// counts as none; gc reports it).
    fn policy_members(&self) -> Result<Vec<(Vec<IpAddr>, Labels)>> {
        let mut out = Vec::new();
        for name in self.store.sandbox_names()? {
            let Ok(Some(rec)) = self.store.read_record(&name) else {
                continue;
            };
            let done = match &rec.attached {
                Some(a) => a.done,
                None => rec.holder.is_some(),
            };
            if !done {
                continue;
            }
            let labels = self.store.read_labels(&rec.owner()).unwrap_or_default();
            out.push((rec.addresses(), labels));
        }
        Ok(out)
    }

    /// Make the policy table what the store says: rebuilt whole in one
    /// batch, or deleted if there is no policy. Call under the store's
    /// lock.
    pub(crate) fn sync_policies(&self) -> Result<()> {
        let policies = self.store.read_policies()?;
        self.install_policies(&policies)
    }

    /// [`sync_policies`](NetInner::sync_policies) with `policies`.
    pub(crate) fn install_policies(&self, policies: &[Policy]) -> Result<()> {
        if policies.is_empty() {
            // A read first: no transaction when there is nothing to delete.
            // Where nf_tables is missing or refused, no table was made
            // either: a network without policies needs none.
            let there =
                self.with_policy_nft("nf_tables: look for policy table", |nft, bridge| match nft
                    .policy_table_exists(bridge)
                {
                    Err(errno) if refused(errno) => Ok(false),
                    other => other,
                });
            match there {
                Ok(false) | Err(Error::NotPermitted { .. }) => return Ok(()),
                Err(Error::Netlink { errno, .. }) if refused(errno) => return Ok(()),
                Ok(true) => {}
                Err(e) => return Err(e),
            }
        }
        let mut elements: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for (addrs, labels) in self.policy_members()? {
            for base in plan::memberships(policies, &labels) {
                for a in &addrs {
                    elements
                        .entry(set_name(&base, a.is_ipv6()))
                        .or_default()
                        .push(*a);
                }
            }
        }
        let elements: Vec<(String, Vec<IpAddr>)> = elements.into_iter().collect();
        let compiled = plan::compile(policies);
        let families = (self.v4.is_some(), self.v6.is_some());
        self.with_policy_nft("nf_tables: write policy table", |nft, bridge| {
            nft.replace_policy(bridge, families, &compiled, &elements)
        })
    }

    /// A sandbox's addresses and labels went from `old` to `new` (`None`:
    /// it was not there, or is gone): add and delete its addresses in the
    /// policy table's sets, in one batch. If the table is not what the
    /// store says (a set or an element is missing), it is rebuilt. Call
    /// under the store's lock; without a policy this is one failed open.
    pub(crate) fn policy_update(
        &self,
        old: Option<(&[IpAddr], &Labels)>,
        new: Option<(&[IpAddr], &Labels)>,
    ) -> Result<()> {
        let policies = self.store.read_policies()?;
        if policies.is_empty() {
            return Ok(());
        }
        let (add, del) = plan::delta(&policies, old, new);
        let changed = self.with_policy_nft("nf_tables: change policy sets", |nft, bridge| {
            nft.policy_elements(bridge, &add, &del)
        });
        match changed {
            Err(Error::Netlink {
                errno: Errno::ENOENT,
                ..
            }) => self.install_policies(&policies),
            other => other,
        }
    }
}
