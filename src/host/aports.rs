//! The lifetime of the network's table of attachments' port mappings
//! (`link::nft`'s `inet podnet-<bridge>-aports`), shared by every process
//! of the network and owned by none: the store's note that it may exist,
//! adding and deleting an attachment's rules, the rules no record claims,
//! and the table's deletion once no attachment has a mapping.
//!
//! The records are the truth, not the rules: an attachment's record names
//! its mappings and is written (under the store's lock) before any of its
//! rules is added, and the rules are deleted before the record goes. So a
//! crash at any step leaves rules that a record claims, or rules of no
//! live record, which gc deletes; and the note is written before the table
//! is first made and taken away only after it is deleted.

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::host::NetInner;
use crate::link::nft::{aports_table, Dnat, Found, Nft};
use crate::ports::{self, rule_owner, PortMapping, PortNetns, PublishedPort};

/// An attachment's mapping that takes a host port asked for.
#[derive(Debug)]
pub(crate) struct Taken {
    /// The attachment's key, `<container ID>/<interface>`.
    pub by: String,
    /// Its mapping.
    pub theirs: PortMapping,
    /// The mapping asked for that meets it.
    pub ours: PortMapping,
}

impl Taken {
    /// [`Error::PortInUse`] for `what` (a sandbox or an attachment).
    pub(crate) fn error(&self, what: &str) -> Error {
        tracing::info!(port = %self.ours, taken_by = %self.theirs, attachment = %self.by,
            "host port mapped by an attachment");
        let port = *self
            .ours
            .host_ports()
            .start()
            .max(self.theirs.host_ports().start());
        Error::PortInUse {
            sandbox: what.to_owned(),
            protocol: self.ours.protocol(),
            address: std::net::SocketAddr::new(self.ours.host_address(), port),
            netns: PortNetns::Network,
            errno: Errno::EADDRINUSE,
        }
    }
}

impl NetInner {
    /// The name of the network's table of attachments' port mappings.
    pub(crate) fn aports_table(&self) -> String {
        aports_table(&self.bridge)
    }

    /// The first mapping of an attachment's record (any process's, live,
    /// pending or dead: its rules may be there until it is ended) that
    /// takes a host port of `wanted`; the record `except` is not looked at.
    /// Without the store's note no attachment has a mapping, and only the
    /// note is looked at. A damaged record is gc's to report, and is
    /// skipped.
    pub(crate) fn attachment_port_taken(
        &self,
        wanted: &[PortMapping],
        except: Option<&str>,
    ) -> Result<Option<Taken>> {
        if wanted.is_empty() || !self.store.attach_ports_noted()? {
            return Ok(None);
        }
        for name in self.store.sandbox_names()? {
            if Some(name.as_str()) == except {
                continue;
            }
            let Ok(Some(rec)) = self.store.read_record(&name) else {
                continue;
            };
            let Some(a) = &rec.attached else { continue };
            for theirs in a.ports.iter().map(ports::from_record) {
                if let Some(ours) = wanted.iter().find(|m| ports::overlaps(m, &theirs)) {
                    return Ok(Some(Taken {
                        by: format!("{}/{}", a.container_id, a.ifname),
                        theirs,
                        ours: ours.clone(),
                    }));
                }
            }
        }
        Ok(None)
    }

    /// For a sandbox's mappings, once their host ports are bound
    /// (`published`): [`Error::PortInUse`] for `sandbox` if an attachment
    /// maps one of them. Bound first, looked at after: an attach writes its
    /// record before it looks for a socket on its ports, so of a sandbox
    /// and an attachment that ask for a port at once, one sees the other.
    pub(crate) fn refuse_attachment_ports(
        &self,
        sandbox: &str,
        published: &[PublishedPort],
    ) -> Result<()> {
        let wanted: Vec<PortMapping> = published
            .iter()
            .filter(|p| p.netns == PortNetns::Network)
            .map(|p| PortMapping::new(p.protocol, p.host.port(), p.pod_port).host_ip(p.host.ip()))
            .collect();
        match self.attachment_port_taken(&wanted, None)? {
            Some(taken) => Err(taken.error(sandbox)),
            None => Ok(()),
        }
    }

    /// Run `f` on a blocking thread with an nf_tables socket of the host
    /// namespace for the table (opened once, by this thread moved in for
    /// the call).
    async fn with_aports_nft<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Nft) -> std::result::Result<T, Errno> + Send + 'static,
    ) -> Result<T> {
        let table = self.aports_table();
        self.with_host_nft(&self.aports_nft, Nft::open_shared, op, table, f)
            .await
    }

    /// Add an attachment's rules (`dnats`), making the table and its
    /// chains if they are not there, all or none. The caller wrote the
    /// store's note under its lock first (see
    /// [`Store::note_attach_ports`](crate::ipam::Store::note_attach_ports)).
    pub(crate) async fn add_attachment_rules(&self, dnats: Vec<Dnat>) -> Result<()> {
        if dnats.is_empty() {
            return Ok(());
        }
        self.with_aports_nft(
            "nf_tables: add DNAT rules of an attachment to",
            move |nft| nft.add_shared(&dnats),
        )
        .await
    }

    /// Delete the rules of the attachments whose record (`<name>@<id>`)
    /// `pick` holds for; their comments. Without the store's note there is
    /// no table, and nf_tables is not touched.
    pub(crate) async fn delete_attachment_rules(
        &self,
        pick: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Vec<String>> {
        if !self.store.attach_ports_noted()? {
            return Ok(Vec::new());
        }
        self.with_aports_nft(
            "nf_tables: delete DNAT rules of an attachment from",
            move |nft| nft.delete_where(|c| rule_owner(c).is_some_and(&pick)),
        )
        .await
    }

    /// Every podnet rule of the table (none without the store's note, or
    /// without the table).
    pub(crate) async fn attachment_rules(&self) -> Result<Vec<Found>> {
        if !self.store.attach_ports_noted()? {
            return Ok(Vec::new());
        }
        self.with_aports_nft("nf_tables: list rules of", |nft| nft.list())
            .await
    }

    /// Delete the rules of the table whose owner `claimed` does not hold
    /// for (a rule of another form is no attachment's either); their
    /// comments. For gc, under the store's lock.
    pub(crate) async fn delete_unclaimed_attachment_rules(
        &self,
        claimed: impl Fn(&str) -> bool,
    ) -> Result<Vec<String>> {
        let garbage: Vec<Found> = self
            .attachment_rules()
            .await?
            .into_iter()
            .filter(|f| !rule_owner(&f.comment).is_some_and(&claimed))
            .collect();
        if garbage.is_empty() {
            return Ok(Vec::new());
        }
        let comments = garbage.iter().map(|f| f.comment.clone()).collect();
        self.with_aports_nft(
            "nf_tables: delete DNAT rules of gone attachments from",
            move |nft| nft.delete(&garbage),
        )
        .await?;
        Ok(comments)
    }

    /// Delete the table if the store's note says it may exist, then the
    /// note. Call under the store's lock with no record that has port
    /// mappings left. Whether there was a table.
    pub(crate) async fn drop_attachment_ports(&self) -> Result<bool> {
        if !self.store.attach_ports_noted()? {
            return Ok(false);
        }
        let deleted = self
            .with_aports_nft("nf_tables: delete table", |nft| nft.delete_shared())
            .await;
        let deleted = match deleted {
            // No nf_tables here at all: no table either.
            Err(e) if e.errno().is_some_and(super::egress::nf_tables_missing) => false,
            other => other?,
        };
        self.store.unnote_attach_ports()?;
        Ok(deleted)
    }
}
