//! Addresses and the on-disk store of a network: the pool arithmetic
//! (`pool`), the record format (`record`), the store's files (`store`),
//! address reservations (`alloc`) and pod volume directories (`volumes`).
//! Only this module touches the store's files.

mod alloc;
mod labels;
mod policies;
mod policy_text;
mod pool;
mod record;
mod store;
mod volumes;

pub(crate) use pool::Pool;
pub(crate) use record::{
    container_id_ok, netns_path_ok, parse_owner, Attached, AttachedPort, Record,
};
pub(crate) use store::{EgressNote, RecordFile, Store};
pub(crate) use volumes::Volumes;

/// The store, for this crate's benchmarks only (feature `internals`).
#[cfg(feature = "internals")]
pub(crate) mod internals {
    use std::net::IpAddr;
    use std::path::Path;

    use ipnetwork::IpNetwork;

    use super::{Pool, Store};
    use crate::error::Result;

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
