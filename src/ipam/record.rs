//! The record format: a sandbox's `key=value` lines as the store writes
//! them, with their integrity checks (`sum=` over the head, and the
//! fixed-width `done=` line whose check continues it), and the owner
//! names (`<name>@<id>`) that address reservations point to. No I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ident::Ident;
use crate::names::{fnv1a, fnv1a_from};

/// What the store knows of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub name: String,
    /// Tells this sandbox from an earlier or later one of the same name;
    /// its addresses are reserved as `<name>@<id>`.
    pub id: String,
    /// The process that created it.
    pub creator: Ident,
    /// Its holder, once there is one.
    pub holder: Option<Ident>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    /// The host end of its veth pair.
    pub veth: String,
    /// Whether the holder outlives its creator.
    pub persistent: bool,
    /// Extra DNS names of the sandbox (DNS-1123 labels), which other
    /// sandboxes may share.
    pub aliases: Vec<String>,
    /// For an attachment of a namespace another program holds (a CNI
    /// runtime's), that namespace and the key of the attachment; such a
    /// record has no holder.
    pub attached: Option<Attached>,
}

/// What the record of an attachment keeps of it: its key, and the
/// namespace that keeps it alive, known by its nsfs inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attached {
    /// The runtime's container ID (CNI_CONTAINERID).
    pub container_id: String,
    /// The interface inside (CNI_IFNAME).
    pub ifname: String,
    /// The namespace as the runtime named it (CNI_NETNS).
    pub netns: PathBuf,
    /// The device and inode of that namespace when it was attached: the
    /// path names it while a stat of it still finds them.
    pub netns_dev: u64,
    pub netns_ino: u64,
    /// Whether the namespace got default routes via the gateways.
    pub default_routes: bool,
    /// Its port mappings (kernel rules in the network's shared table of
    /// attachments' mappings): written with the record, before any rule is
    /// made, so that a rule never lacks the record that claims it.
    pub ports: Vec<AttachedPort>,
    /// Whether the attachment was completed (its `done=` line is filled).
    pub done: bool,
}

/// One port mapping of an attachment, as its record keeps it (the `ports`
/// layer turns it into a `PortMapping` and back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttachedPort {
    /// UDP, else TCP.
    pub udp: bool,
    /// The host address (unspecified: every local address of its family,
    /// `::` both families).
    pub host: IpAddr,
    pub host_ports: RangeInclusive<u16>,
    pub pod_ports: RangeInclusive<u16>,
}

impl AttachedPort {
    /// `tcp 0.0.0.0 8080 80`, `udp :: 9000-9002 7000-7002`: no `,`, `=` or
    /// newline, so a list of them is one record line.
    fn encode(&self) -> String {
        let range = |r: &RangeInclusive<u16>| match r.start() == r.end() {
            true => r.start().to_string(),
            false => format!("{}-{}", r.start(), r.end()),
        };
        format!(
            "{} {} {} {}",
            if self.udp { "udp" } else { "tcp" },
            self.host,
            range(&self.host_ports),
            range(&self.pod_ports)
        )
    }

    fn decode(v: &str) -> Option<AttachedPort> {
        let range = |r: &str| -> Option<RangeInclusive<u16>> {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            let (a, b) = (a.parse().ok()?, b.parse().ok()?);
            (a <= b).then_some(a..=b)
        };
        let mut f = v.split(' ');
        let udp = match f.next()? {
            "tcp" => false,
            "udp" => true,
            _ => return None,
        };
        let host = f.next()?.parse().ok()?;
        let host_ports = range(f.next()?)?;
        let pod_ports = range(f.next()?)?;
        if f.next().is_some() {
            return None;
        }
        Some(AttachedPort {
            udp,
            host,
            host_ports,
            pod_ports,
        })
    }
}

/// The most bytes a container ID of an attachment may have (runtimes use
/// 64 hex digits).
pub(crate) const CONTAINER_ID_MAX: usize = 256;

/// Whether `id` may be kept in a record as a container ID: what CNI allows
/// (letters, digits, `_`, `.`, `-`, starting with a letter or digit).
pub(crate) fn container_id_ok(id: &str) -> bool {
    id.len() <= CONTAINER_ID_MAX
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Whether `path` may be kept in a record line: absolute, valid UTF-8, no
/// newline, at most 4,096 bytes.
pub(crate) fn netns_path_ok(path: &Path) -> bool {
    path.is_absolute()
        && path
            .to_str()
            .is_some_and(|p| p.len() <= 4096 && !p.contains('\n'))
}

impl Record {
    /// What its address reservations point to.
    pub(crate) fn owner(&self) -> String {
        format!("{}@{}", self.name, self.id)
    }

    /// Its addresses, IPv4 first.
    pub(crate) fn addresses(&self) -> Vec<std::net::IpAddr> {
        self.ipv4
            .map(std::net::IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(std::net::IpAddr::V6))
            .collect()
    }

    /// The record's text, and the hash of its head (everything before the
    /// `done=` line), which the done line's check continues.
    pub(super) fn encode(&self) -> (String, u64) {
        let mut head = format!(
            "name={}\nid={}\ncreator={}:{}\nveth={}\npersistent={}\n",
            self.name,
            self.id,
            self.creator.pid,
            self.creator.start,
            self.veth,
            u8::from(self.persistent)
        );
        if let Some(a) = self.ipv4 {
            head += &format!("ipv4={a}\n");
        }
        if let Some(a) = self.ipv6 {
            head += &format!("ipv6={a}\n");
        }
        if !self.aliases.is_empty() {
            head += &format!("aliases={}\n", self.aliases.join(","));
        }
        if let Some(a) = &self.attached {
            head += &format!(
                "container={}\nifname={}\nnetns={}:{}:{}\ndefault-routes={}\n",
                a.container_id,
                a.ifname,
                a.netns_dev,
                a.netns_ino,
                a.netns.display(),
                u8::from(a.default_routes)
            );
            if !a.ports.is_empty() {
                let ports: Vec<String> = a.ports.iter().map(AttachedPort::encode).collect();
                head += &format!("ports={}\n", ports.join(","));
            }
        }
        head += &format!("sum={}\n", check_hex(fnv1a(head.as_bytes())));
        let head_hash = fnv1a(head.as_bytes());
        // Always present and fixed-width, so that it can be filled in place
        // once the sandbox is made (see `Store::set_done`).
        let text = head + &self.done_line(head_hash);
        (text, head_hash)
    }

    /// Parse a record of the store of network (bridge) `network`, whose
    /// host-side interface names end with `-<tag>`; `path` is its file.
    ///
    /// The record's integrity: its `sum=` line is the FNV-1a 64 of every
    /// byte before it, and the check at the end of its `done=` line
    /// continues that hash over the head (up to the done line) and the
    /// line's value, so a change of any byte fails one of them. A done line
    /// whose check fails is reported as [`TORN`] (it may be being written);
    /// [`Store::read_record`](super::Store::read_record) reads it again
    /// before it calls it damaged.
    pub(super) fn decode(text: &str, path: &Path, network: &str, tag: &str) -> Result<Record> {
        let corrupt = |reason: String| Error::StateCorrupt {
            path: path.to_owned(),
            reason,
        };
        // `encode` always ends with the done line: without it, or without
        // its newline, the record was cut short, and must not be read as a
        // sandbox that is still being made (gc would reclaim it once its
        // creator is gone, live holder and all).
        let Some(body) = text.strip_suffix('\n') else {
            return Err(corrupt(
                "its last line has no newline: the record is cut short".into(),
            ));
        };
        let (head_len, last) = body
            .rsplit_once('\n')
            .map_or((0, body), |(h, l)| (h.len() + 1, l));
        let Some(done) = last.strip_prefix("done=") else {
            return Err(corrupt(
                "its done= line is missing: the record is cut short".into(),
            ));
        };
        // Fixed-width: shorter is a record cut short (a line being filled
        // in place keeps its width).
        if done.len() != DONE_WIDTH {
            return Err(corrupt(format!(
                "its done line is {} characters wide, not {DONE_WIDTH}: \
                 the record is cut short",
                done.len()
            )));
        }
        let head = &text[..head_len];
        let (fields, sum_line) = match head.strip_suffix('\n') {
            Some(h) => h
                .rsplit_once('\n')
                .map_or(("", h), |(f, l)| (&head[..f.len() + 1], l)),
            None => ("", ""),
        };
        let ident = |v: &str| -> Option<Ident> {
            let (p, s) = v.split_once(':')?;
            Some(Ident {
                pid: p.parse().ok()?,
                start: s.parse().ok()?,
            })
        };
        let (mut name, mut id, mut creator) = (None, None, None);
        let (mut ipv4, mut ipv6, mut veth, mut persistent) = (None, None, None, None);
        let mut aliases = Vec::new();
        let (mut container, mut ifname, mut netns) = (None, None, None);
        let mut default_routes = None;
        let mut ports = Vec::new();
        for line in fields.lines() {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| corrupt(format!("line {line:?} is not key=value")))?;
            let bad = || corrupt(format!("bad value for {k}: {v:?}"));
            match k {
                "name" => name = Some(v.to_owned()),
                "id" => id = Some(v.to_owned()),
                "creator" => creator = Some(ident(v).ok_or_else(bad)?),
                "ipv4" => ipv4 = Some(v.parse().map_err(|_| bad())?),
                "ipv6" => ipv6 = Some(v.parse().map_err(|_| bad())?),
                "veth" => veth = Some(v.to_owned()),
                "aliases" => {
                    for a in v.split(',') {
                        crate::names::validate_alias(a).map_err(|_| bad())?;
                        aliases.push(a.to_owned());
                    }
                }
                "container" if container_id_ok(v) => container = Some(v.to_owned()),
                "ifname" => {
                    crate::names::validate_ifname("interface", v).map_err(|_| bad())?;
                    ifname = Some(v.to_owned());
                }
                "netns" => {
                    let mut parts = v.splitn(3, ':');
                    let (Some(dev), Some(ino), Some(path)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        return Err(bad());
                    };
                    let path = PathBuf::from(path);
                    if !netns_path_ok(&path) {
                        return Err(bad());
                    }
                    let dev: u64 = dev.parse().map_err(|_| bad())?;
                    let ino: u64 = ino.parse().map_err(|_| bad())?;
                    netns = Some((path, dev, ino));
                }
                "container" => return Err(bad()),
                "ports" => {
                    for p in v.split(',') {
                        ports.push(AttachedPort::decode(p).ok_or_else(bad)?);
                    }
                }
                "default-routes" => match v {
                    "0" => default_routes = Some(false),
                    "1" => default_routes = Some(true),
                    _ => return Err(bad()),
                },
                "persistent" => match v {
                    "0" => persistent = Some(false),
                    "1" => persistent = Some(true),
                    _ => return Err(bad()),
                },
                // Keys of later versions are skipped, not refused (the
                // check covers them all the same).
                _ => {}
            }
        }
        let missing = |k: &str| corrupt(format!("{k} is missing"));
        let name = name.ok_or_else(|| missing("name"))?;
        // A record steers gc to a veth and addresses: it must be the record
        // of the file it is in.
        if path.file_name().and_then(|f| f.to_str()) != Some(name.as_str()) {
            return Err(corrupt(format!(
                "it names sandbox {name:?}, not its file's"
            )));
        }
        if let Err(e) = crate::names::validate_name(&name) {
            return Err(corrupt(format!(
                "its file's name is not a sandbox name: {e}"
            )));
        }
        // gc and remove() delete the interface of this name: it must be
        // the sandbox's own host end, never the bridge or another link.
        let veth = veth.ok_or_else(|| missing("veth"))?;
        let own = format!("{name}-{tag}");
        if veth != own || veth == network {
            return Err(corrupt(format!(
                "its veth {veth:?} is not {own:?}, the host end of sandbox {name:?} \
                 on network {network:?}"
            )));
        }
        // Last, so that the checks above name what is wrong where they can.
        if sum_line.strip_prefix("sum=") != Some(check_hex(fnv1a(fields.as_bytes())).as_str()) {
            return Err(corrupt(format!(
                "its content does not match its check ({sum_line:?}): \
                 the record was changed or damaged after it was written"
            )));
        }
        let done = parse_done(done, fnv1a(head.as_bytes())).map_err(|torn| match torn {
            true => corrupt(TORN.into()),
            false => corrupt(format!("bad done line: {done:?}")),
        })?;
        let mut attached = match (container, ifname, netns, default_routes) {
            (None, None, None, None) if ports.is_empty() => None,
            (
                Some(container_id),
                Some(ifname),
                Some((netns, netns_dev, netns_ino)),
                Some(default_routes),
            ) => Some(Attached {
                container_id,
                ifname,
                netns,
                netns_dev,
                netns_ino,
                default_routes,
                ports,
                done: false,
            }),
            (None, None, None, None) => {
                return Err(corrupt("it has ports= but is no attachment".into()))
            }
            _ => {
                return Err(corrupt(
                    "it has some of container=, ifname=, netns= and default-routes= \
                     but not all"
                        .into(),
                ))
            }
        };
        let mut holder = None;
        if let Some((h, v4, v6)) = done {
            match (h, attached.as_mut()) {
                (Some(h), None) => holder = Some(h),
                (None, Some(a)) => a.done = true,
                _ => {
                    let what = match attached {
                        Some(_) => "a namespace attachment",
                        None => "a sandbox with a holder",
                    };
                    return Err(corrupt(format!("its done line does not fit {what}")));
                }
            }
            ipv4 = v4.or(ipv4);
            ipv6 = v6.or(ipv6);
        }
        Ok(Record {
            name,
            id: id.ok_or_else(|| missing("id"))?,
            creator: creator.ok_or_else(|| missing("creator"))?,
            holder,
            ipv4,
            ipv6,
            veth,
            persistent: persistent.ok_or_else(|| missing("persistent"))?,
            aliases,
            attached,
        })
    }
}

/// A record check as it is written: 16 lowercase hex digits. Checks are
/// compared as text, so that a digit changed to its other case fails too.
fn check_hex(h: u64) -> String {
    format!("{h:016x}")
}

/// Width of the value of a record's `done=` line,
/// `PID:START,IPV4,IPV6,CHECK` (at most 10 + 1 + 20 + 1 + 15 + 1 + 39 + 1 +
/// 16 characters, `-` for a missing address), padded with spaces; all
/// spaces until the sandbox is made.
pub(super) const DONE_WIDTH: usize = 112;

/// Why a record was read as corrupt when its `done=` line fails its check:
/// it may be being written at that moment, so readers read it again.
pub(super) const TORN: &str = "its done line is being written";

/// Why a record is corrupt whose `done=` line failed its check every time
/// it was read.
pub(super) const DONE_DAMAGED: &str = "its done line does not match its check: \
                            the record was changed or damaged after it was written";

impl Record {
    /// `done=<value>\n`, `DONE_WIDTH` wide: the holder (`ns` for a done
    /// attachment) and the addresses, once there is one, checked by
    /// continuing `head_hash`.
    pub(super) fn done_line(&self, head_hash: u64) -> String {
        let by = match (&self.holder, &self.attached) {
            (Some(h), _) => Some(format!("{}:{}", h.pid, h.start)),
            (None, Some(a)) if a.done => Some(ATTACHED.to_owned()),
            _ => None,
        };
        let value = by.map_or_else(String::new, |by| {
            let show = |a: Option<String>| a.unwrap_or_else(|| "-".into());
            let body = format!(
                "{by},{},{}",
                show(self.ipv4.map(|a| a.to_string())),
                show(self.ipv6.map(|a| a.to_string())),
            );
            let check = check_hex(fnv1a_from(head_hash, body.as_bytes()));
            format!("{body},{check}")
        });
        format!("done={value:<DONE_WIDTH$}\n")
    }
}

/// The holder field of the `done=` line of a done attachment.
const ATTACHED: &str = "ns";

/// What a `done=` line says: the holder (none for an attachment) and the
/// addresses.
type Done = (Option<Ident>, Option<Ipv4Addr>, Option<Ipv6Addr>);

/// The value of a `done=` line of a record whose head hashes to
/// `head_hash`: `Ok(None)` when blank, `Err(true)` when its check does not
/// match (a write in progress, or damage), `Err(false)` when it is
/// malformed.
fn parse_done(v: &str, head_hash: u64) -> std::result::Result<Option<Done>, bool> {
    let v = v.trim_end_matches(' ');
    if v.is_empty() {
        return Ok(None);
    }
    // A prefix of a value being written fails the check.
    let (body, check) = v.rsplit_once(',').ok_or(true)?;
    if check != check_hex(fnv1a_from(head_hash, body.as_bytes())) {
        return Err(true);
    }
    let mut parts = body.split(',');
    let (Some(holder), Some(v4), Some(v6), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(false);
    };
    let ident = if holder == ATTACHED {
        None
    } else {
        let (pid, start) = holder.split_once(':').ok_or(false)?;
        Some(Ident {
            pid: pid.parse().map_err(|_| false)?,
            start: start.parse().map_err(|_| false)?,
        })
    };
    let v4 = match v4 {
        "-" => None,
        a => Some(a.parse().map_err(|_| false)?),
    };
    let v6 = match v6 {
        "-" => None,
        a => Some(a.parse().map_err(|_| false)?),
    };
    Ok(Some((ident, v4, v6)))
}

/// The sandbox name and instance id of an owner (`<name>@<id>`), if it is
/// one this store writes: a sandbox name and an id of hex digits and `-`.
pub(crate) fn parse_owner(owner: &str) -> Option<(&str, &str)> {
    let (name, id) = owner.split_once('@')?;
    let id_ok =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    (id_ok && crate::names::validate_name(name).is_ok()).then_some((name, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attachment_record_round_trips_done_or_not() {
        let mut rec = Record {
            name: "c0123456789a".into(),
            id: "1-2-3".into(),
            creator: Ident { pid: 7, start: 99 },
            holder: None,
            ipv4: Some("10.88.0.2".parse().unwrap()),
            ipv6: None,
            veth: "c0123456789a-k3".into(),
            persistent: true,
            aliases: vec![],
            attached: Some(Attached {
                container_id: "abc_1.x-y".into(),
                ifname: "net1".into(),
                netns: "/run/netns/cni-1 2".into(),
                netns_dev: 4,
                netns_ino: 4026532291,
                default_routes: false,
                ports: vec![],
                done: false,
            }),
        };
        let p = Path::new("/x/sandbox/c0123456789a");
        assert_eq!(
            Record::decode(&rec.encode().0, p, "br0", "k3").unwrap(),
            rec
        );
        if let Some(a) = rec.attached.as_mut() {
            a.done = true;
        }
        assert_eq!(
            Record::decode(&rec.encode().0, p, "br0", "k3").unwrap(),
            rec
        );
        // Half an attachment is no record to believe.
        let (text, _) = rec.encode();
        let cut: String = text
            .lines()
            .filter(|l| !l.starts_with("ifname="))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(Record::decode(&cut, p, "br0", "k3").is_err());
    }

    #[test]
    fn an_attachment_record_keeps_its_port_mappings_and_refuses_bad_ones() {
        let rec = Record {
            name: "c0123456789a".into(),
            id: "1-2-3".into(),
            creator: Ident { pid: 7, start: 99 },
            holder: None,
            ipv4: Some("10.88.0.2".parse().unwrap()),
            ipv6: Some("fd00:88::2".parse().unwrap()),
            veth: "c0123456789a-k3".into(),
            persistent: true,
            aliases: vec![],
            attached: Some(Attached {
                container_id: "abc".into(),
                ifname: "eth0".into(),
                netns: "/run/netns/x".into(),
                netns_dev: 4,
                netns_ino: 5,
                default_routes: true,
                ports: vec![
                    AttachedPort {
                        udp: false,
                        host: "0.0.0.0".parse().unwrap(),
                        host_ports: 8080..=8080,
                        pod_ports: 80..=80,
                    },
                    AttachedPort {
                        udp: true,
                        host: "::".parse().unwrap(),
                        host_ports: 9000..=9002,
                        pod_ports: 7000..=7002,
                    },
                ],
                done: true,
            }),
        };
        let p = Path::new("/x/sandbox/c0123456789a");
        let (text, _) = rec.encode();
        assert!(text.contains("ports=tcp 0.0.0.0 8080 80,udp :: 9000-9002 7000-7002\n"));
        assert_eq!(Record::decode(&text, p, "br0", "k3").unwrap(), rec);
        for bad in [
            "sctp 0.0.0.0 1 1",
            "tcp x 1 1",
            "tcp :: 2-1 1-0",
            "tcp :: 1 1 1",
        ] {
            let text = text.replace("ports=tcp 0.0.0.0 8080 80", &format!("ports={bad}"));
            // Values are checked before the sum, so the error names the line.
            let err = Record::decode(&text, p, "br0", "k3").unwrap_err();
            assert!(
                err.to_string().contains("bad value for ports"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn record_round_trips_and_garbage_is_an_error_naming_the_file() {
        let rec = Record {
            name: "web".into(),
            id: "1-2-3".into(),
            creator: Ident { pid: 7, start: 99 },
            holder: Some(Ident { pid: 8, start: 100 }),
            ipv4: Some("10.88.0.2".parse().unwrap()),
            ipv6: None,
            veth: "web-k3".into(),
            persistent: false,
            aliases: vec!["db".into(), "cache".into()],
            attached: None,
        };
        let p = Path::new("/x/sandbox/web");
        assert_eq!(
            Record::decode(&rec.encode().0, p, "br0", "k3").unwrap(),
            rec
        );
        for bad in ["", "garbage", "name=web\ncreator=x\n", "\u{0}\u{1}=\n"] {
            let err = Record::decode(bad, p, "br0", "k3").unwrap_err();
            assert!(matches!(err, Error::StateCorrupt { .. }), "{bad:?}: {err}");
            assert!(err.to_string().contains("/x/sandbox/web"));
        }
        // A veth that is not the sandbox's own host end: gc and remove()
        // would delete it.
        for veth in ["br0", "eth0", "web-k4", "api-k3", "web-k3x"] {
            let bad = Record {
                veth: veth.into(),
                ..rec.clone()
            };
            let err = Record::decode(&bad.encode().0, p, "br0", "k3").unwrap_err();
            assert!(
                matches!(&err, Error::StateCorrupt { reason, .. } if reason.contains("veth")),
                "{veth}: {err}"
            );
        }
        // Nor may a record's file be named what no sandbox can be.
        let bad = Record {
            name: "Web".into(),
            veth: "Web-k3".into(),
            ..rec.clone()
        };
        let err = Record::decode(&bad.encode().0, Path::new("/x/sandbox/Web"), "br0", "k3");
        assert!(matches!(err, Err(Error::StateCorrupt { .. })), "{err:?}");
        // Cut anywhere, done or not: corrupt, never a panic nor a record.
        let undone = Record {
            holder: None,
            ..rec.clone()
        };
        assert_eq!(
            Record::decode(&undone.encode().0, p, "br0", "k3").unwrap(),
            undone
        );
        for (text, _) in [rec.encode(), undone.encode()] {
            for cut in 0..text.len() {
                let err = Record::decode(&text[..cut], p, "br0", "k3").unwrap_err();
                assert!(matches!(err, Error::StateCorrupt { .. }), "{cut}: {err}");
            }
        }
    }

    /// A done and an undone record of sandbox "web", and their file.
    fn web_records() -> ([Record; 3], &'static Path) {
        let done = Record {
            name: "web".into(),
            id: "1f-2a-3".into(),
            creator: Ident { pid: 7, start: 99 },
            holder: Some(Ident { pid: 8, start: 100 }),
            ipv4: Some("10.88.0.2".parse().unwrap()),
            ipv6: Some("fd00:88::2".parse().unwrap()),
            veth: "web-k3".into(),
            persistent: true,
            aliases: vec!["db".into()],
            attached: None,
        };
        let undone = Record {
            holder: None,
            ipv4: None,
            ipv6: None,
            ..done.clone()
        };
        let attached = Record {
            holder: None,
            attached: Some(Attached {
                container_id: "0123abcd".into(),
                ifname: "eth0".into(),
                netns: "/run/netns/cni-0123".into(),
                netns_dev: 4,
                netns_ino: 4026532291,
                default_routes: true,
                ports: vec![AttachedPort {
                    udp: false,
                    host: "0.0.0.0".parse().unwrap(),
                    host_ports: 8080..=8080,
                    pod_ports: 80..=80,
                }],
                done: true,
            }),
            ..done.clone()
        };
        ([done, undone, attached], Path::new("/x/sandbox/web"))
    }

    #[test]
    fn any_one_byte_replaced_inserted_or_deleted_makes_a_record_corrupt() {
        let (recs, p) = web_records();
        for rec in recs {
            let text = rec.encode().0.into_bytes();
            let decode = |b: &[u8]| {
                std::str::from_utf8(b)
                    .map_err(|_| ())
                    .and_then(|t| Record::decode(t, p, "br0", "k3").map_err(|_| ()))
            };
            assert_eq!(decode(&text), Ok(rec.clone()));
            for at in 0..text.len() {
                // Every other value at each position: flips, other case, NUL.
                for byte in 0..=u8::MAX {
                    if byte == text[at] {
                        continue;
                    }
                    let mut b = text.clone();
                    b[at] = byte;
                    assert!(decode(&b).is_err(), "byte {at} set to {byte:#x}");
                }
                for byte in [0, b' ', b'\n', b'0', b'a', b'='] {
                    let mut b = text.clone();
                    b.insert(at, byte);
                    assert!(decode(&b).is_err(), "{byte:#x} inserted at {at}");
                }
                let mut b = text.clone();
                b.remove(at);
                assert!(decode(&b).is_err(), "byte {at} deleted");
            }
            // Every line twice, and every two lines swapped.
            let lines: Vec<&[u8]> = text.split_inclusive(|c| *c == b'\n').collect();
            for i in 0..lines.len() {
                let mut twice = lines.clone();
                twice.insert(i, lines[i]);
                assert!(decode(&twice.concat()).is_err(), "line {i} twice");
                for j in i + 1..lines.len() {
                    let mut swapped = lines.clone();
                    swapped.swap(i, j);
                    assert!(
                        decode(&swapped.concat()).is_err(),
                        "lines {i} and {j} swapped"
                    );
                }
            }
        }
    }

    #[test]
    fn a_blank_done_line_is_not_done_and_a_malformed_one_is_not_torn() {
        // Blank is not done yet; a malformed value is corrupt, not torn.
        let h = 0x1234_5678_9abc_def0;
        assert_eq!(parse_done(&" ".repeat(DONE_WIDTH), h), Ok(None));
        let body = "12:34,10.88.0.2,-";
        let good = format!("{body},{}", check_hex(fnv1a_from(h, body.as_bytes())));
        // The check continues the head's hash: under another head it fails.
        assert_eq!(parse_done(&good, h ^ 1), Err(true));
        assert_eq!(
            parse_done(&good, h),
            Ok(Some((
                Some(Ident { pid: 12, start: 34 }),
                Some(Ipv4Addr::new(10, 88, 0, 2)),
                None
            )))
        );
        let bad = "1x:34,-,-";
        let bad = format!("{bad},{}", check_hex(fnv1a_from(h, bad.as_bytes())));
        assert_eq!(parse_done(&bad, h), Err(false));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_are_never_a_record_and_never_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)
        ) {
            // The store refuses non-UTF-8 before decoding: what decode
            // sees is text, so the bytes are decoded as (lossy) text.
            let (_, p) = web_records();
            let text = String::from_utf8_lossy(&bytes);
            let got = Record::decode(&text, p, "br0", "k3");
            let corrupt = matches!(got, Err(Error::StateCorrupt { .. }));
            proptest::prop_assert!(corrupt, "{:?}", got);
        }

        #[test]
        fn arbitrary_text_of_record_lines_is_never_a_record(
            lines in proptest::collection::vec(
                "(name|id|creator|veth|persistent|ipv4|ipv6|aliases|container|ifname|netns|default-routes|ports|sum|done)=[ -~]{0,120}", 0..12)
        ) {
            let (_, p) = web_records();
            let text = lines.join("\n") + "\n";
            let got = Record::decode(&text, p, "br0", "k3");
            let corrupt = matches!(got, Err(Error::StateCorrupt { .. }));
            proptest::prop_assert!(corrupt, "{:?}", got);
        }

        #[test]
        fn a_record_with_arbitrary_text_spliced_in_is_corrupt(
            which in 0usize..3,
            at in proptest::prelude::any::<usize>(),
            cut in 0usize..8,
            splice in "\\PC{0,12}",
        ) {
            let (recs, p) = web_records();
            let text = recs[which].encode().0;
            let mut at = at % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            let end = (at + cut).min(text.len());
            let damaged = format!("{}{splice}{}", &text[..at], &text[end..]);
            proptest::prop_assume!(damaged != text);
            let got = Record::decode(&damaged, p, "br0", "k3");
            let corrupt = matches!(got, Err(Error::StateCorrupt { .. }));
            proptest::prop_assert!(corrupt, "{:?}: {:?}", damaged, got);
        }
    }
}
