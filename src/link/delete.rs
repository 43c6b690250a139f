//! Links going away: deletion by name or index (a missing link counts as
//! deleted), the unplug of a removed sandbox's veth (off the bridge, down,
//! renamed), and batched deletions in one request.

use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use nix::errno::Errno;
use rtnetlink::{Handle, LinkUnspec};

use super::inspect::link_blocking;
use super::*;
use crate::error::Result;

/// The index of the bridge link `name` is enslaved to, if any.
pub(crate) async fn master_of(h: &Handle, name: &str) -> Result<Option<u32>> {
    Ok(get_link(h, name).await?.and_then(|l| {
        l.attributes.iter().find_map(|a| match a {
            LinkAttribute::Controller(i) => Some(*i),
            _ => None,
        })
    }))
}

/// Delete link `name`; `object` describes it for errors. Returns whether
/// it existed (ENODEV: already gone).
pub(crate) async fn delete_link(h: &Handle, name: &str, object: &str) -> Result<bool> {
    let msg = LinkUnspec::new_with_name(name).build();
    deleted(h.link().del_with_message(msg).execute().await, object)
}

/// Delete link `index`; `object` describes it for errors. Returns whether
/// it existed.
pub(crate) async fn delete_link_index(h: &Handle, index: u32, object: &str) -> Result<bool> {
    deleted(h.link().del(index).execute().await, object)
}

/// What a deletion's answer means: `Ok(false)` if the link was gone
/// already (ENODEV, ENOENT).
pub(super) fn deleted(
    answer: std::result::Result<(), rtnetlink::Error>,
    object: &str,
) -> Result<bool> {
    match answer {
        Ok(()) => Ok(true),
        Err(rtnetlink::Error::NetlinkError(m))
            if [Errno::ENODEV as i32, Errno::ENOENT as i32].contains(&-m.raw_code()) =>
        {
            Ok(false)
        }
        Err(e) => Err(nl_err("delete link", object, e)),
    }
}

/// The index of link `name` in `nl`'s namespace (one `RTM_GETLINK`), or
/// `None` if there is none; `object` names it in errors.
pub(super) fn index_blocking(nl: &mut Nl, name: &str, object: &str) -> Result<Option<u32>> {
    Ok(link_blocking(nl, name, object)?.map(|l| l.header.index))
}

/// [`delete_link`] over a blocking socket: the kernel deletes a veth inside
/// the request (both ends, waiting for the network stack to let go of them:
/// tens of ms), so it is for blocking threads (the deleting thread's
/// fallback by name) and rollbacks of a create that failed.
pub(crate) fn delete_link_blocking(nl: &mut Nl, name: &str, object: &str) -> Result<bool> {
    let msg = LinkUnspec::new_with_name(name).build();
    let answer = nl
        .batch(vec![(RouteNetlinkMessage::DelLink(msg), 0)])
        .map_err(|e| io_nl_err("delete link", object, e))?
        .pop()
        .unwrap_or(Err(Errno::EIO));
    match answer {
        Ok(_) => Ok(true),
        Err(Errno::ENODEV | Errno::ENOENT) => Ok(false),
        Err(errno) => Err(errno_err("delete link", object, errno)),
    }
}

/// What [`unplug_blocking`] did with a veth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unplugged {
    /// It was gone already.
    Gone,
    /// It is off its bridge, down, and renamed: delete it by its new name.
    Renamed,
    /// Not both requests were carried out (or their answers were lost):
    /// delete it by this index, which is its own whatever its name.
    Stuck(u32),
}

/// Take the veth whose host end is `name` (index `index`, if known) out
/// of use at once, without waiting for the kernel to delete it: one
/// `sendmsg` of two `RTM_SETLINK`s to its index, one taking it off its
/// bridge (`IFLA_MASTER` 0), setting it down (so its peer loses carrier
/// and sends nothing more) and giving it the alias `alias` (who removed
/// it), one renaming it `dying` (the kernel renames only a link that is
/// down, and checks that before it changes the flags, so this is a request
/// of its own; and it looks a link up by the name in the request, so a
/// rename goes by index). Its name, its bridge port and its peer's address
/// are then free for others; the caller deletes it by `dying` later.
/// Without `index`, it is looked up by name first (one more round trip).
pub(crate) fn unplug_blocking(
    nl: &mut Nl,
    name: &str,
    index: Option<u32>,
    dying: &str,
    alias: &str,
    object: &str,
) -> Result<Unplugged> {
    let Some(index) = index.map_or_else(|| index_blocking(nl, name, object), |i| Ok(Some(i)))?
    else {
        return Ok(Unplugged::Gone);
    };
    let off = LinkUnspec::new_with_index(index)
        .nocontroller()
        .down()
        .alias(alias)
        .build();
    let rename = LinkUnspec::new_with_index(index).name(dying).build();
    let answers = nl.batch(vec![
        (RouteNetlinkMessage::SetLink(off), 0),
        (RouteNetlinkMessage::SetLink(rename), 0),
    ]);
    Ok(match answers.as_deref() {
        Ok([Err(Errno::ENODEV | Errno::ENOENT), _]) => Unplugged::Gone,
        Ok([Ok(_), Ok(_)]) => Unplugged::Renamed,
        _ => Unplugged::Stuck(index),
    })
}

/// Names and aliases of the links whose names start with `prefix`, from
/// one dump of every link (for gc, which is not on any hot path).
pub(crate) async fn links_named(h: &Handle, prefix: &str) -> Result<Vec<(String, Option<String>)>> {
    let links: Vec<LinkMessage> = h
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| nl_err("list links", &format!("named {prefix}*"), e))?;
    Ok(links
        .iter()
        .filter_map(|l| {
            let name = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) if n.starts_with(prefix) => Some(n.clone()),
                _ => None,
            })?;
            let alias = l.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfAlias(s) => Some(s.clone()),
                _ => None,
            });
            Some((name, alias))
        })
        .collect())
}

/// Delete the links named in `links` (name, object for errors), veth peers
/// included, in one kernel operation: one `sendmsg` puts each in link
/// group `group` (`RTM_SETLINK` with `IFLA_GROUP`), then one `RTM_DELLINK`
/// of the group has the kernel unregister them all at once
/// (`unregister_netdevice_many`), so they share one wait for the network
/// stack to let go of them, which one by one each waits for alone (most of
/// a veth deletion's time). The group must be one that no other link of
/// the namespace is in (the caller picks it at random), and the batch small
/// enough that the acknowledgements fit the socket's receive buffer.
/// `Ok(false)` for a link that was gone already. A link that could not be
/// put in the group, or a group the kernel would not delete, is deleted by
/// name instead. Also says whether none had to be deleted by name.
pub(crate) fn delete_links_blocking(
    nl: &mut Nl,
    links: &[(&str, &str)],
    group: u32,
) -> (Vec<Result<bool>>, bool) {
    if let [(name, object)] = links {
        return (vec![delete_link_blocking(nl, name, object)], true);
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Step {
        Grouped,
        Gone,
        ByName,
    }
    let set_group = |name: &str| {
        let mut msg = LinkUnspec::new_with_name(name).build();
        msg.attributes.push(LinkAttribute::Group(group));
        (RouteNetlinkMessage::SetLink(msg), 0)
    };
    let steps: Vec<Step> = match nl.batch(links.iter().map(|(name, _)| set_group(name)).collect()) {
        Ok(answers) => answers
            .into_iter()
            .map(|answer| match answer {
                Ok(_) => Step::Grouped,
                Err(Errno::ENODEV | Errno::ENOENT) => Step::Gone,
                Err(_) => Step::ByName,
            })
            .collect(),
        // Which of them the kernel put in the group is unknown: by name.
        Err(_) => vec![Step::ByName; links.len()],
    };
    // The group deleted, or none of it left to delete (ENODEV: the kernel
    // deleted them meanwhile with their namespaces).
    let group_gone = !steps.contains(&Step::Grouped) || {
        let mut del = LinkMessage::default();
        del.attributes.push(LinkAttribute::Group(group));
        nl.batch(vec![(RouteNetlinkMessage::DelLink(del), 0)])
            .ok()
            .and_then(|mut answers| answers.pop())
            .is_some_and(|answer| matches!(answer, Ok(_) | Err(Errno::ENODEV)))
    };
    let results = steps
        .iter()
        .zip(links)
        .map(|(step, (name, object))| match step {
            Step::Grouped if group_gone => Ok(true),
            Step::Gone => Ok(false),
            Step::Grouped | Step::ByName => delete_link_blocking(nl, name, object),
        })
        .collect();
    (results, group_gone && !steps.contains(&Step::ByName))
}
