//! Ending mappings: one port, every port of a sandbox instance (awaited
//! or not), and gc's sweep of gone sandboxes and unclaimed rules; the
//! kernel rules are deleted first, then the sockets closed.

use nix::errno::Errno;
use tokio::task::JoinHandle;

use super::engine::{forwarder_gone, lock, nft_of, EngineCell, EngineState};
use super::kernel::{delete_serials, nft_error, parse_comment};
use super::mapping::PublishedPort;
use crate::error::{Error, Result};
use crate::link::nft;

/// Take every mapping of sandbox instance `id` (or only `port` of it) out
/// of the table, and end it on the forwarder: its rules deleted first,
/// then its sockets closed. The returned task runs to the end whether or
/// not it is awaited; it gives the comments of the rules deleted. `None`
/// if nothing matched.
pub(super) fn finish(
    s: &EngineState,
    id: &str,
    port: Option<&PublishedPort>,
) -> Option<JoinHandle<std::result::Result<Vec<String>, Errno>>> {
    let (lives, watcher) = {
        let mut table = lock(&s.table);
        match port {
            None => {
                let entry = table.entries.remove(id)?;
                (entry.ports, Some(entry.watcher))
            }
            Some(port) => {
                let entry = table.entries.get_mut(id)?;
                let i = entry.ports.iter().position(|l| l.port == *port)?;
                (vec![entry.ports.remove(i)], None)
            }
        }
    };
    if let Some(w) = watcher {
        w.abort();
    }
    let serials: Vec<u64> = lives.iter().filter_map(|l| l.serial).collect();
    let nft = s.nft();
    let rt = s.rt.clone();
    Some(s.rt.spawn(async move {
        let deleted = match nft {
            Some(nft) if !serials.is_empty() => rt
                .spawn_blocking(move || delete_serials(&nft, &serials))
                .await
                .unwrap_or(Err(Errno::ESHUTDOWN)),
            _ => Ok(Vec::new()),
        };
        // The sockets are closed even if the rules could not be deleted.
        for live in lives {
            live.task.abort();
            let _ = live.task.await;
        }
        deleted
    }))
}

/// What a failed deletion of the rules of `what` in the table of `slot`
/// is reported as.
fn delete_error(slot: &EngineCell, what: String, errno: Errno) -> Error {
    let table = nft_of(slot).map_or_else(String::new, |n| n.table().to_owned());
    nft_error(
        "nf_tables: delete DNAT rules (left in this process's table until gc(), the network's drop or the process's exit)",
        &format!("{what} in table inet {table}"),
        errno,
    )
}

/// Stop forwarding `port` of sandbox instance `id`: its rules are deleted,
/// then its socket and its connections closed. `false` if it was not
/// published. If the rules cannot be deleted (after retries), the socket
/// is closed all the same and the error says so.
///
/// Cancel safe: the mapping is taken out at once and ended on the
/// forwarder whether or not this is awaited to the end.
pub(crate) async fn end_one(slot: &EngineCell, id: &str, port: &PublishedPort) -> Result<bool> {
    let Some(engine) = slot.get() else {
        return Ok(false);
    };
    let Some(job) = finish(&engine.s, id, Some(port)) else {
        return Ok(false);
    };
    match job.await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(errno)) => Err(delete_error(
            slot,
            format!("{port} of sandbox instance {id}"),
            errno,
        )),
        Err(_) => Err(forwarder_gone()),
    }
}

/// Stop every mapping of sandbox instance `id`: its rules are deleted, then
/// its sockets closed; returns once they are. The sockets are closed even
/// if the rules cannot be deleted (then the error says so). Cancel safe, as
/// [`end_one`].
pub(crate) async fn end_all(slot: &EngineCell, id: &str) -> Result<()> {
    let Some(engine) = slot.get() else {
        return Ok(());
    };
    // Nothing published, or the holder watch ended it.
    let Some(job) = finish(&engine.s, id, None) else {
        return Ok(());
    };
    match job.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(errno)) => Err(delete_error(
            slot,
            format!("every port of sandbox instance {id}"),
            errno,
        )),
        Err(_) => Err(forwarder_gone()),
    }
}

/// Stop every mapping of sandbox instance `id` without waiting (for Drop):
/// the rules are deleted and the sockets closed as soon as the forwarder
/// runs.
pub(crate) fn abort_all(slot: &EngineCell, id: &str) {
    if let Some(engine) = slot.get() {
        drop(finish(&engine.s, id, None));
    }
}

/// gc's share of the mappings of this process's network in `slot`: end
/// the mappings of sandbox instances for which `gone(name, owner)` holds
/// (`owner` is `<name>@<id>`), then delete every podnet rule of the
/// network's table that no live mapping claims (left by a deletion that
/// failed). Returns the comments of the rules deleted. Rules of other
/// processes are in tables of their own, which the kernel deletes when
/// they exit.
pub(crate) async fn gc(
    slot: &EngineCell,
    gone: impl Fn(&str, &str) -> bool,
) -> Result<Vec<String>> {
    let Some(engine) = slot.get() else {
        return Ok(Vec::new());
    };
    let s = &engine.s;
    let stale: Vec<String> = lock(&s.table)
        .entries
        .iter()
        .filter(|(id, e)| gone(&e.name, &format!("{}@{id}", e.name)))
        .map(|(id, _)| id.clone())
        .collect();
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for id in stale {
        if let Some(job) = finish(s, &id, None) {
            match job.await {
                Ok(Ok(gone)) => deleted.extend(gone),
                Ok(Err(errno)) => errors.push(delete_error(
                    slot,
                    format!("every port of gone sandbox instance {id}"),
                    errno,
                )),
                Err(_) => errors.push(forwarder_gone()),
            }
        }
    }
    if let Some(nft) = s.nft() {
        let shared = s.clone();
        let swept =
            s.rt.spawn_blocking(move || {
                let found = nft.list()?;
                // Claims are read after the listing: a rule listed was
                // added after its serial was claimed (installing), so it
                // is claimed now unless its mapping has ended since.
                let garbage: Vec<nft::Found> = {
                    let table = lock(&shared.table);
                    found
                        .into_iter()
                        .filter(|f| {
                            parse_comment(&f.comment).is_none_or(|c| !table.claims(c.serial))
                        })
                        .collect()
                };
                nft.delete(&garbage)?;
                Ok(garbage.into_iter().map(|f| f.comment).collect::<Vec<_>>())
            })
            .await
            .unwrap_or(Err(Errno::ESHUTDOWN));
        match swept {
            Ok(gone) => deleted.extend(gone),
            Err(errno) => errors.push(delete_error(
                slot,
                "rules no live mapping claims".to_owned(),
                errno,
            )),
        }
    }
    match errors.len() {
        0 => Ok(deleted),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Multiple {
            op: "delete stale port-mapping rules".to_owned(),
            errors,
        }),
    }
}
