//! `route_localnet` on the network's bridge, for attachments' mappings
//! served at the host's `127.0.0.1`: DNAT of a loopback destination to a
//! pod sends a packet from `127.0.0.1` out by the bridge (and its replies
//! back in by it), which the kernel drops as martian unless
//! `net.ipv4.conf.<bridge>.route_localnet` is 1. The network's own bridge
//! is the only one that routes: it has the gateway addresses, and the
//! shards are joined to it at layer 2 only (docs/architecture.md,
//! "Shards"), so a pod on any shard is reached by it.
//!
//! podnet turns it on only while an attachment has such a mapping, notes
//! in the store that it did (written before the sysctl), and writes it
//! back to 0 only where its note is and no attachment needs it any
//! longer. One that was on already is left as it is, and never turned
//! off. docs/port-forwarding.md says why.

use std::io::ErrorKind;
use std::os::fd::AsFd;

use crate::error::{Error, Result};
use crate::host::NetInner;
use crate::netns;
use crate::ports;

/// The sysctl file of `bridge`'s `route_localnet` (of the calling
/// thread's network namespace).
fn file(bridge: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet")
}

impl NetInner {
    /// Whether `route_localnet` of the network's bridge is on in the host
    /// namespace (a missing bridge has it off).
    pub(crate) fn localnet_is_on(&self) -> Result<bool> {
        let what = format!("host namespace of network {:?}", self.bridge);
        let _host = netns::enter(self.host_ns.as_fd(), &what)?;
        let path = file(&self.bridge);
        match std::fs::read_to_string(&path) {
            Ok(v) => Ok(v.trim() != "0"),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("read sysctl", &path, e)),
        }
    }

    /// Turn on `route_localnet` of the network's bridge in the host
    /// namespace if it is off, writing the store's note first (a crash
    /// after it leaves a note that the next end of such an attachment, gc
    /// or `Network::remove()` clears). Call under the store's lock, so that
    /// no detach or gc turns it off meanwhile.
    pub(crate) fn localnet_on(&self) -> Result<()> {
        if self.localnet_is_on()? {
            return Ok(());
        }
        self.store.note_localnet()?;
        let what = format!("host namespace of network {:?}", self.bridge);
        let _host = netns::enter(self.host_ns.as_fd(), &what)?;
        let path = file(&self.bridge);
        std::fs::write(&path, "1").map_err(|e| match e.kind() {
            ErrorKind::PermissionDenied => Error::not_permitted(format!(
                "turn on net.ipv4.conf.{}.route_localnet ({path}) for a port mapping on \
                 127.0.0.1",
                self.bridge
            )),
            _ => Error::io("turn on route_localnet", &path, e),
        })?;
        tracing::info!(network = %self.bridge,
            "turned on route_localnet for attachments' mappings on 127.0.0.1");
        Ok(())
    }

    /// Whether a record of the store may need `route_localnet`: an
    /// attachment's with a mapping served at loopback and an IPv4 address
    /// (or none yet: an attach in progress), or a damaged one, which
    /// cannot say.
    fn localnet_needed(&self) -> Result<bool> {
        for name in self.store.sandbox_names()? {
            let rec = match self.store.read_record(&name) {
                Ok(Some(rec)) => rec,
                Ok(None) => continue,
                Err(_) => return Ok(true),
            };
            let Some(a) = &rec.attached else { continue };
            let v4 = rec.ipv4.is_some() || (!a.done && self.v4.is_some());
            if v4
                && a.ports
                    .iter()
                    .map(ports::from_record)
                    .any(|m| ports::needs_localnet(&m))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Write `route_localnet` of the network's bridge back to 0 if
    /// podnet's note says it turned it on and no record needs it any
    /// longer, then take the note away (a bridge that is gone has nothing
    /// to write back). Call under the store's lock. Without the note, only
    /// the note is looked at.
    pub(crate) fn localnet_off_unneeded(&self) -> Result<()> {
        if !self.store.localnet_noted()? || self.localnet_needed()? {
            return Ok(());
        }
        {
            let what = format!("host namespace of network {:?}", self.bridge);
            let _host = netns::enter(self.host_ns.as_fd(), &what)?;
            let path = file(&self.bridge);
            match std::fs::write(&path, "0") {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(Error::io("turn off route_localnet", &path, e))
                }
                _ => {}
            }
        }
        tracing::info!(network = %self.bridge,
            "turned route_localnet back off: no attachment needs it");
        self.store.unnote_localnet()
    }
}
