//! A running sandbox's published ports: `add_port`, `remove_port` and
//! `ports`, on top of the network's port mappings (`crate::ports`).

use super::Sandbox;
use crate::error::{Error, Result};
use crate::ports::{self, PortMapping, PublishedPort};

impl Sandbox {
    /// Publish a port of the running sandbox on the network's host
    /// namespace, or on the real host ([`PortMapping::real_host`]), and
    /// return what was published, one entry per port, with the ports the
    /// kernel chose for host port 0.
    ///
    /// Connections to the host port are forwarded to the sandbox's address
    /// (the one of the host address's family if it has one) by the kernel
    /// (nf_tables DNAT rules) or by podnet's userspace forwarder in this
    /// process, as the network's
    /// [`port_forwarding`](crate::NetworkBuilder::port_forwarding) and the
    /// host namespace allow; [`PublishedPort::forwarder`] says which (the
    /// userspace one for a real-host port). The host port is bound by this
    /// process either way, or for the real host by its `podnet-outer`, and
    /// held by this process only. The mapping ends with
    /// [`remove_port`](Sandbox::remove_port), [`remove`](Sandbox::remove),
    /// the death of the holder, or this process.
    ///
    /// ```no_run
    /// # async fn f(pod: &podnet::Sandbox) -> podnet::Result<()> {
    /// let published = pod.add_port(podnet::PortMapping::tcp(0, 80)).await?;
    /// println!("curl http://{}/", published[0].host);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Nothing changes on error: [`Error::InvalidConfig`] for a bad mapping;
    /// [`Error::PortInUse`] if a host port is taken (ports of the same
    /// mapping bound before it are closed again); [`Error::NotPermitted`]
    /// for a port below 1024 without `CAP_NET_BIND_SERVICE` over the host
    /// namespace; [`Error::PrivilegedPort`] for one on the real host that is
    /// privileged there; [`Error::Sys`] if `podnet-outer` does not answer
    /// (`ETIMEDOUT`, after 5 s) or was ended by an earlier such failure,
    /// and naming the address for other bind failures (`EADDRNOTAVAIL`:
    /// not an address of the namespace the port opens in);
    /// [`Error::HolderDied`], [`Error::NotFound`] as for [`enter`](Sandbox::enter);
    /// [`Error::Netlink`] naming the nf_tables operation if the kernel
    /// refuses the rules with [`PortForwarding::Kernel`](crate::PortForwarding::Kernel),
    /// or fails them with an errno that is not a refusal (with
    /// [`PortForwarding::Auto`](crate::PortForwarding::Auto), a refusal
    /// leaves the ports to the userspace forwarder instead).
    ///
    /// # Cancel safety
    /// Dropping the future before it completes closes the ports bound so
    /// far and publishes nothing; kernel rules that were being added are
    /// deleted once the kernel has taken them.
    pub async fn add_port(&self, mapping: PortMapping) -> Result<Vec<PublishedPort>> {
        self.inner.check_alive()?;
        let net = &self.inner.net;
        let reserved = ports::reserve(
            &net.ports,
            &net.port_host(),
            &self.inner.name,
            std::slice::from_ref(&mapping),
        )
        .await?;
        net.refuse_attachment_ports(&self.inner.name, &reserved.ports())?;
        ports::start(
            &net.ports,
            &ports::Target {
                name: &self.inner.name,
                id: &self.inner.id,
                subnets: net.subnets(),
                ipv4: self.inner.ipv4,
                ipv6: self.inner.ipv6,
                holder_pid: self.inner.holder.pid(),
                holder_pidfd: self.inner.holder.pidfd(),
            },
            reserved,
        )
        .await
    }

    /// Stop publishing `port` (one entry of [`ports`](Sandbox::ports)):
    /// its kernel rules are deleted, then its host socket and its
    /// connections closed; returns once they are.
    ///
    /// # Errors
    /// [`Error::NotFound`] if it is not published for this sandbox.
    /// [`Error::Netlink`] if its kernel rules could not be deleted (tried
    /// three times): the mapping is ended all the same, and the rules are
    /// left in this process's table until [`gc`](crate::Network::gc), the
    /// drop of the network, or the end of the process, whichever comes
    /// first.
    ///
    /// # Cancel safety
    /// The mapping is ended when the call starts; a dropped future only
    /// stops waiting for its rules to be deleted and its sockets closed.
    pub async fn remove_port(&self, port: &PublishedPort) -> Result<()> {
        if ports::end_one(&self.inner.net.ports, &self.inner.id, port).await? {
            Ok(())
        } else {
            Err(Error::NotFound {
                what: "published port",
                name: format!("{port} of sandbox {:?}", self.inner.name),
            })
        }
    }

    /// The ports published for this sandbox by this process, in the order
    /// they were added. Mappings are served by the process that made them,
    /// so a handle from [`open_sandbox`](crate::Network::open_sandbox) in
    /// another process sees none of them.
    pub fn ports(&self) -> Vec<PublishedPort> {
        ports::list(&self.inner.net.ports, &self.inner.id)
    }
}
