//! Ending attachments: one by its key (CNI's DEL: fine twice, fine when
//! the namespace is gone, always releasing the address), and every one
//! whose key is not in a list the runtime gives (CNI's GC).

use std::collections::HashSet;
use std::net::IpAddr;

use super::{key, record_name};
use crate::error::{Error, Result};
use crate::host::NetInner;
use crate::ipam::{parse_owner, Record};
use crate::link;
use crate::ports;

/// End the attachment keyed (`container_id`, `ifname`): delete its port
/// rules and its veth pair (if its namespace still holds it), release its
/// addresses and its record. `Ok(false)` if there was none. A record that
/// cannot be read is ended all the same, by the names its key gives: its
/// rules, its veth, and every address reserved under its name.
pub(crate) async fn detach(net: &NetInner, container_id: &str, ifname: &str) -> Result<bool> {
    let name = record_name(container_id, ifname);
    match net.store.read_record(&name) {
        Ok(None) => Ok(false),
        Ok(Some(rec)) => {
            let ours = rec
                .attached
                .as_ref()
                .is_some_and(|a| a.container_id == container_id && a.ifname == ifname);
            if !ours {
                // Another key of the same hash, or a sandbox: not this one.
                return Ok(false);
            }
            end(net, &rec).await?;
            Ok(true)
        }
        Err(Error::StateCorrupt { path, reason }) => {
            tracing::warn!(path = %path.display(), %reason,
                "ending attachment {} whose record cannot be read", key(container_id, ifname));
            let of_name = name.clone();
            net.delete_attachment_rules(move |o| parse_owner(o).is_some_and(|(n, _)| n == of_name))
                .await?;
            let veth = format!("{name}-{}", net.tag);
            let object = format!("veth {veth} of attachment {}", key(container_id, ifname));
            link::delete_link(&net.conn.handle, &veth, &object).await?;
            let _lock = net.store.lock().await?;
            // Every instance of that name: the record cannot say which.
            release_all_of(net, |o| parse_owner(o).is_some_and(|(n, _)| n == name))?;
            net.store.remove_record(&name)?;
            // It may have needed route_localnet: the others may not.
            net.localnet_off_unneeded()?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Delete `rec`'s port rules and its veth, then release its addresses and
/// remove its record (under the store's lock, so a concurrent gc sees all
/// or none of it), and turn `route_localnet` back off where podnet turned
/// it on for it and no other attachment needs it. The rules go first: once the record is gone, another
/// attachment may map the same host ports, and rules left before its own
/// in the chains would take its traffic.
async fn end(net: &NetInner, rec: &Record) -> Result<()> {
    if rec.attached.as_ref().is_some_and(|a| !a.ports.is_empty()) {
        let owner = rec.owner();
        net.delete_attachment_rules(move |o| o == owner).await?;
    }
    let object = format!("veth {} of attachment {:?}", rec.veth, rec.name);
    // Only on one of this network's bridges, or on none (its namespace is
    // being torn down): another network whose tag is the same names its
    // veths alike.
    let bridges = net.bridge_indexes().await?;
    match link::master_of(&net.conn.handle, &rec.veth).await? {
        Some(m) if !bridges.contains(&m) => {}
        _ => {
            link::delete_link(&net.conn.handle, &rec.veth, &object).await?;
        }
    }
    let _lock = net.store.lock().await?;
    let owner = rec.owner();
    let done = rec.attached.as_ref().is_some_and(|a| a.done);
    if done {
        for ip in [rec.ipv4.map(IpAddr::V4), rec.ipv6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
        {
            net.store.release(ip, &owner)?;
        }
    } else {
        // Not done: its addresses are in no line of the record yet (an
        // ADD that died after allocating), only in their reservations.
        release_all_of(net, |o| o == owner)?;
    }
    net.store.remove_record_if(&rec.name, &rec.id)?;
    let localnet = rec.attached.as_ref().is_some_and(|a| {
        a.ports
            .iter()
            .map(ports::from_record)
            .any(|m| ports::needs_localnet(&m))
    });
    if localnet {
        // After the record: a crash in between leaves a note gc clears.
        net.localnet_off_unneeded()?;
    }
    Ok(())
}

/// Release every address whose owner `mine` picks; the caller holds the
/// store's lock.
fn release_all_of(net: &NetInner, mine: impl Fn(&str) -> bool) -> Result<()> {
    for entry in net.store.reservations()? {
        let (Some(addr), Ok(owner)) = (entry.addr, entry.target.as_deref()) else {
            continue;
        };
        if mine(owner) {
            net.store.release(addr, owner)?;
        }
    }
    Ok(())
}

/// End every attachment of the network whose key is not in `keep`; their
/// keys. Every one is attempted; the errors are returned together.
pub(crate) async fn retain(
    net: &NetInner,
    keep: &[(String, String)],
) -> Result<Vec<(String, String)>> {
    let keep: HashSet<(&str, &str)> = keep.iter().map(|(c, i)| (c.as_str(), i.as_str())).collect();
    let mut ended = Vec::new();
    let mut errors = Vec::new();
    for name in net.store.sandbox_names()? {
        let rec = match net.store.read_record(&name) {
            Ok(Some(rec)) => rec,
            Ok(None) => continue,
            // A damaged record has no key to compare: gc reports it.
            Err(_) => continue,
        };
        let Some(a) = &rec.attached else { continue };
        if keep.contains(&(a.container_id.as_str(), a.ifname.as_str())) {
            continue;
        }
        match end(net, &rec).await {
            Ok(()) => ended.push((a.container_id.clone(), a.ifname.clone())),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(ended)
    } else {
        Err(Error::Multiple {
            op: format!("end attachments of network {:?} not kept", net.bridge),
            errors,
        })
    }
}
