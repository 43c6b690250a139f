//! Looking at attachments: the list of the network's, and one checked
//! against the kernel (CNI's CHECK): its namespace, the interface inside,
//! its addresses and default routes, the host end on a bridge of the
//! network, and the rules of its port mappings.

use std::os::fd::AsFd;

use super::make::open_netns;
use super::{key, record_name, Attachment};
use crate::error::{Error, Result};
use crate::host::NetInner;
use crate::ipam::Record;
use crate::link::{self, Nl};
use crate::netns;
use crate::ports;

/// The completed attachments of the network, from every process's records.
pub(crate) fn list(net: &NetInner) -> Result<Vec<Attachment>> {
    let mut out = Vec::new();
    for name in net.store.sandbox_names()? {
        let Ok(Some(rec)) = net.store.read_record(&name) else {
            continue;
        };
        if let Some(a) = rec.attached.as_ref().filter(|a| a.done) {
            out.push(Attachment::from_record(net, &rec, a));
        }
    }
    Ok(out)
}

/// The record of the attachment keyed (`container_id`, `ifname`), if there
/// is a completed one.
fn record_of(net: &NetInner, container_id: &str, ifname: &str) -> Result<Record> {
    let not_found = || Error::NotFound {
        what: "attachment",
        name: key(container_id, ifname),
    };
    let rec = net
        .store
        .read_record(&record_name(container_id, ifname))?
        .ok_or_else(not_found)?;
    match &rec.attached {
        Some(a) if a.container_id == container_id && a.ifname == ifname && a.done => Ok(rec),
        _ => Err(not_found()),
    }
}

/// Check the attachment keyed (`container_id`, `ifname`) against the
/// kernel; it as it is, with its MAC addresses.
pub(crate) async fn check(net: &NetInner, container_id: &str, ifname: &str) -> Result<Attachment> {
    let rec = record_of(net, container_id, ifname)?;
    let Some(a) = &rec.attached else {
        return Err(Error::NotFound {
            what: "attachment",
            name: key(container_id, ifname),
        });
    };
    let mut att = Attachment::from_record(net, &rec, a);
    let mut missing = Vec::new();
    let what = format!("network namespace {}", a.netns.display());
    let host = link::interface_blocking(&mut *net.host_nl()?, &rec.veth, &rec.veth)?;
    let bridges = net.bridge_indexes().await?;
    match &host {
        None => missing.push(format!("host interface {} is gone", rec.veth)),
        Some(f) if !f.controller.is_some_and(|c| bridges.contains(&c)) => missing.push(format!(
            "host interface {} is not on a bridge of network {:?}",
            rec.veth, net.bridge
        )),
        Some(f) => att.host_mac = Some(f.mac),
    }
    let inside = match open_netns(&a.netns, &what) {
        Err(Error::NotFound { .. }) => {
            missing.push(format!("{what} is gone"));
            None
        }
        Err(e) => return Err(e),
        Ok(ns) => {
            let st = nix::sys::stat::fstat(ns.as_fd())
                .map_err(|errno| Error::sys("stat", what.clone(), errno))?;
            if (st.st_dev, st.st_ino) != (a.netns_dev, a.netns_ino) {
                missing.push(format!("{what} is another namespace than the one attached"));
                None
            } else {
                let _inside = netns::enter(ns.as_fd(), &what)?;
                let mut nl =
                    Nl::here().map_err(|e| Error::io("open netlink socket in", &what, e))?;
                link::interface_blocking(&mut nl, &a.ifname, &what)?.or_else(|| {
                    missing.push(format!("interface {} in {what} is gone", a.ifname));
                    None
                })
            }
        }
    };
    if let Some(f) = inside {
        att.mac = Some(f.mac);
        for n in &att.addresses {
            if !f.addresses.contains(&(n.ip(), n.prefix())) {
                missing.push(format!("address {n} on {} is gone", a.ifname));
            }
        }
        if a.default_routes {
            for gw in &att.gateways {
                if !f.default_gateways.contains(gw) {
                    missing.push(format!("default route via {gw} on {} is gone", a.ifname));
                }
            }
        }
    }
    if !a.ports.is_empty() {
        let found = net.attachment_rules().await?;
        let table = net.aports_table();
        let want = ports::rule_dnats(
            &rec.owner(),
            &att.ports,
            rec.ipv4,
            rec.ipv6,
            net.subnets(),
            &net.bridge,
        );
        for d in &want {
            let chains = d.chains();
            let mut seen: Vec<&str> = Vec::new();
            for chain in &chains {
                if seen.contains(chain) {
                    continue;
                }
                seen.push(chain);
                // A port may have several rules in one chain, all with its
                // comment.
                let wanted = chains.iter().filter(|c| *c == chain).count();
                let there = found
                    .iter()
                    .filter(|f| f.chain == *chain && f.comment == d.comment)
                    .count();
                if there < wanted {
                    missing.push(format!(
                        "port rule {:?} in chain {chain} of table inet {table} is gone \
                         ({there} of its {wanted} there)",
                        d.comment
                    ));
                }
            }
        }
        if want.iter().any(|d| d.localnet.is_some()) && !net.localnet_is_on()? {
            missing.push(format!(
                "net.ipv4.conf.{}.route_localnet is off (its mappings on 127.0.0.1 need it)",
                net.bridge
            ));
        }
    }
    if missing.is_empty() {
        Ok(att)
    } else {
        Err(Error::Broken {
            key: key(container_id, ifname),
            missing,
        })
    }
}
