//! The store's integrity rule: a damaged record or reservation is reported,
//! never believed, and gc never frees an address that a live sandbox may
//! still own, so no create is ever given one. Damage is done by hand (a
//! character of a record's id, entries of the address directory that are
//! not reservations) and by a property test over records.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use common::{in_netns, network, record_path, reservation_path, store_dir, Ctx};
use podnet::{Error, GcReport, Network, Phase, Sandbox};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The damaged entry gc reported at `path`, if it did.
fn damaged_at<'a>(report: &'a GcReport, path: &Path) -> Option<&'a podnet::Damaged> {
    report.corrupt.iter().find(|d| d.path == path)
}

/// Asking for `addr` is refused: something holds it.
async fn assert_taken(net: &Network, addr: IpAddr, what: &str) {
    match net.sandbox("probe").ip(addr).create().await {
        Err(Error::AddressTaken { .. }) => {}
        Ok(pod) => {
            pod.remove().await.unwrap();
            panic!("{what}: a create was given {addr}");
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Remove `pod`, made by `fresh`, and let `fresh` finish deleting its veth:
/// deletion queues are per handle, so another fresh handle's gc would take
/// a veth still being deleted for a deletion of this process that failed,
/// and report it.
async fn remove_settled(fresh: &Network, pod: Sandbox) {
    pod.remove().await.unwrap();
    podnet::internals::veth_deletions_settled(fresh)
        .await
        .unwrap();
}

/// A persistent sandbox "victim" at 10.88.0.3, its record's text, and the
/// first hex digit of the record's `id=` value with where it is.
struct Victim {
    net: Network,
    pod: Sandbox,
    record: PathBuf,
    full: String,
    /// Where the digit is in `full`.
    at: usize,
    digit: char,
}

impl Victim {
    async fn new(ctx: &Ctx) -> Victim {
        let net = network(ctx).await;
        let pod = net
            .sandbox("victim")
            .ip(ip("10.88.0.3"))
            .persistent(true)
            .create()
            .await
            .unwrap();
        let record = record_path(ctx, "victim");
        let full = std::fs::read_to_string(&record).unwrap();
        let start = full.find("\nid=").unwrap() + "\nid=".len();
        let (i, digit) = full[start..]
            .char_indices()
            .take_while(|(_, c)| *c != '\n')
            .find(|(_, c)| c.is_ascii_hexdigit())
            .unwrap();
        Victim {
            net,
            pod,
            record,
            full,
            at: start + i,
            digit,
        }
    }

    /// The record's `id=` value.
    fn id(&self) -> &str {
        let start = self.full.find("\nid=").unwrap() + "\nid=".len();
        let end = start + self.full[start..].find('\n').unwrap();
        &self.full[start..end]
    }

    /// With its record written as `damaged`, the victim's record is
    /// corrupt everywhere, and gc (by a fresh handle, as another process
    /// would use) reports it, keeps its address from every create, and
    /// reclaims nothing; the victim runs on. Then the record is repaired.
    async fn assert_corrupt_keeping_its_address(self, ctx: &Ctx, damaged: String, what: &str) {
        assert_ne!(damaged, self.full, "{what}");
        std::fs::write(&self.record, &damaged).unwrap();
        let err = self.net.open_sandbox("victim").await.unwrap_err();
        assert!(
            matches!(err, Error::StateCorrupt { ref path, .. } if path == &self.record),
            "{what}: {err}"
        );
        let listed = self.net.sandboxes().await.unwrap();
        assert!(
            listed
                .iter()
                .any(|s| s.name == "victim" && s.phase == Phase::Unknown),
            "{what}: {listed:?}"
        );
        let fresh = network(ctx).await;
        let report = fresh.gc().await.unwrap();
        let d = damaged_at(&report, &self.record).unwrap_or_else(|| panic!("{what}: {report:?}"));
        assert_eq!(d.name.as_deref(), Some("victim"), "{what}");
        assert_eq!(d.addresses, [ip("10.88.0.3")], "{what}");
        assert!(report.is_empty(), "{what}: gc reclaimed {report:?}");
        assert_taken(&fresh, ip("10.88.0.3"), what).await;
        let other = fresh.sandbox("other").create().await.unwrap();
        assert_ne!(other.ip(), ip("10.88.0.3"), "{what}");
        remove_settled(&fresh, other).await;
        assert_eq!(self.pod.phase(), Phase::Running, "{what}");
        std::fs::write(&self.record, &self.full).unwrap();
        assert!(self.net.gc().await.unwrap().corrupt.is_empty());
        self.pod.remove().await.unwrap();
        self.net.remove().await.unwrap();
    }
}

#[test]
fn a_record_whose_id_had_a_digit_replaced_is_corrupt_and_keeps_its_address() {
    in_netns(|ctx| async move {
        let v = Victim::new(&ctx).await;
        let c = v.digit;
        let other = if c.is_ascii_alphabetic() {
            c.to_ascii_uppercase()
        } else if c == '9' {
            '8'
        } else {
            char::from(u8::try_from(c).unwrap() + 1)
        };
        let damaged = format!("{}{other}{}", &v.full[..v.at], &v.full[v.at + 1..]);
        v.assert_corrupt_keeping_its_address(&ctx, damaged, "a digit replaced")
            .await;
    });
}

#[test]
fn a_record_whose_id_had_a_nul_inserted_is_corrupt_and_keeps_its_address() {
    in_netns(|ctx| async move {
        let v = Victim::new(&ctx).await;
        let damaged = format!("{}\0{}", &v.full[..v.at], &v.full[v.at..]);
        v.assert_corrupt_keeping_its_address(&ctx, damaged, "a NUL inserted")
            .await;
    });
}

#[test]
fn a_record_whose_id_changed_case_is_corrupt_and_keeps_its_address() {
    in_netns(|ctx| async move {
        let v = Victim::new(&ctx).await;
        let id = v.id().to_owned();
        let damaged = v.full.replacen(&id, &id.to_ascii_uppercase(), 1);
        v.assert_corrupt_keeping_its_address(&ctx, damaged, "a digit's case changed")
            .await;
    });
}

/// How to make an entry at a path.
type Make = Box<dyn Fn(&Path)>;

/// Entries of the address directory that are not reservations: a file, a
/// directory, a symlink to garbage and a symlink to a record; each with the
/// address it is named after.
fn not_reservations() -> [(&'static str, Make); 4] {
    [
        (
            "10.88.0.9",
            Box::new(|p: &Path| std::fs::write(p, b"web").unwrap()),
        ),
        (
            "10.88.0.10",
            Box::new(|p: &Path| std::fs::create_dir(p).unwrap()),
        ),
        (
            "10.88.0.11",
            Box::new(|p: &Path| std::os::unix::fs::symlink("garbage", p).unwrap()),
        ),
        (
            "10.88.0.12",
            Box::new(|p: &Path| std::os::unix::fs::symlink("../sandbox/web", p).unwrap()),
        ),
    ]
}

/// The test's network with a sandbox "web", and in its address directory
/// the entries of [`not_reservations`] and a file whose name is no address;
/// then gc, which reclaims nothing. The directory and gc's report.
async fn planted(ctx: &Ctx) -> (Network, Sandbox, PathBuf, GcReport) {
    let net = network(ctx).await;
    let pod = net.sandbox("web").create().await.unwrap();
    let addr_dir = store_dir(ctx).join("addr");
    for (addr, make) in &not_reservations() {
        make(&addr_dir.join(addr));
    }
    std::fs::write(addr_dir.join("not-an-address"), b"").unwrap();
    let report = net.gc().await.unwrap();
    assert!(report.is_empty(), "{report:?}");
    (net, pod, addr_dir, report)
}

/// Clear what [`planted`] planted by hand, as docs/state-and-gc.md says.
fn clear(addr_dir: &Path) {
    for (addr, _) in &not_reservations() {
        let path = addr_dir.join(addr);
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    std::fs::remove_file(addr_dir.join("not-an-address")).unwrap();
}

#[test]
fn an_address_entry_that_is_not_a_reservation_is_reported_and_blocks_its_address() {
    in_netns(|ctx| async move {
        let (net, pod, addr_dir, report) = planted(&ctx).await;
        for (addr, _) in &not_reservations() {
            let path = addr_dir.join(addr);
            let d = damaged_at(&report, &path).unwrap_or_else(|| panic!("{addr}: {report:?}"));
            assert_eq!(
                (d.name.as_deref(), &d.addresses[..]),
                (None, &[ip(addr)][..])
            );
            assert!(
                std::fs::symlink_metadata(&path).is_ok(),
                "{addr} was removed"
            );
            assert_taken(&net, ip(addr), addr).await;
        }
        clear(&addr_dir);
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn an_address_entry_named_after_no_address_is_reported_as_such() {
    in_netns(|ctx| async move {
        let (net, pod, addr_dir, report) = planted(&ctx).await;
        let odd = damaged_at(&report, &addr_dir.join("not-an-address")).unwrap();
        assert!(
            odd.addresses.is_empty() && odd.reason.contains("not an address"),
            "{odd:?}"
        );
        clear(&addr_dir);
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn an_address_entry_spelt_otherwise_than_the_store_writes_is_reported() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = net.sandbox("web").create().await.unwrap();
        // 10.88.0.9 as the store never spells it; release() would miss it.
        let odd = store_dir(&ctx).join("addr/010.088.000.009");
        std::os::unix::fs::symlink("ghost@1-2-3", &odd).unwrap();
        let report = net.gc().await.unwrap();
        assert!(report.addresses.is_empty(), "{report:?}");
        let d = damaged_at(&report, &odd).unwrap_or_else(|| panic!("{report:?}"));
        assert!(d.reason.contains("not an address"), "{d:?}");
        std::fs::remove_file(&odd).unwrap();
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_record_larger_than_any_record_is_refused_without_being_read() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = net.sandbox("web").create().await.unwrap();
        let big = store_dir(&ctx).join("sandbox/big");
        // Sparse: 64 GiB that take no room.
        std::fs::File::create(&big)
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
        let err = net.open_sandbox("big").await.unwrap_err();
        assert!(
            matches!(err, Error::StateCorrupt { ref path, ref reason } if path == &big && reason.contains("bytes long")),
            "{err}"
        );
        let report = net.gc().await.unwrap();
        assert!(damaged_at(&report, &big).is_some(), "{report:?}");
        std::fs::remove_file(&big).unwrap();
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn address_entries_cleared_by_hand_free_their_addresses() {
    in_netns(|ctx| async move {
        let (net, pod, addr_dir, _) = planted(&ctx).await;
        clear(&addr_dir);
        assert!(net.gc().await.unwrap().corrupt.is_empty());
        let again = net
            .sandbox("again")
            .ip(ip("10.88.0.9"))
            .create()
            .await
            .unwrap();
        again.remove().await.unwrap();
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn gc_never_releases_an_address_a_live_sandbox_has_on_an_interface() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = net.sandbox("web").create().await.unwrap();
        let ip_cmd = |args: &'static [&'static str]| {
            let mut cmd = pod.command("ip");
            cmd.args(args);
            cmd
        };
        let status = ip_cmd(&["addr", "add", "10.88.0.50/16", "dev", "eth0"])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        // A reservation whose owner has no record: gc's rule would free it.
        let reservation = store_dir(&ctx).join("addr/10.88.0.50");
        std::os::unix::fs::symlink("ghost@1-2-3", &reservation).unwrap();
        let report = net.gc().await.unwrap();
        assert!(!report.addresses.contains(&ip("10.88.0.50")), "{report:?}");
        let d = damaged_at(&report, &reservation).unwrap_or_else(|| panic!("{report:?}"));
        assert_eq!(d.addresses, [ip("10.88.0.50")]);
        assert!(d.reason.contains("\"web\""), "{}", d.reason);
        assert_taken(&net, ip("10.88.0.50"), "held inside web").await;
        // Once no sandbox has it, the same reservation is released.
        let status = ip_cmd(&["addr", "del", "10.88.0.50/16", "dev", "eth0"])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let report = net.gc().await.unwrap();
        assert_eq!(report.addresses, [ip("10.88.0.50")], "{report:?}");
        assert!(report.corrupt.is_empty(), "{report:?}");
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn a_reservation_whose_owner_changed_stays_while_a_live_record_lists_its_address() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = net
            .sandbox("victim")
            .persistent(true)
            .create()
            .await
            .unwrap();
        let reservation = reservation_path(&ctx, &pod.ip().to_string());
        let owner = std::fs::read_link(&reservation).unwrap();
        let owner = owner.to_str().unwrap();
        let (name, id) = owner.split_once('@').unwrap();
        let changed = format!(
            "{name}@{}",
            id.to_ascii_uppercase().replace(['a', 'A'], "b")
        );
        assert_ne!(changed, owner);
        std::fs::remove_file(&reservation).unwrap();
        std::os::unix::fs::symlink(&changed, &reservation).unwrap();
        let report = network(&ctx).await.gc().await.unwrap();
        // Kept because the record lists it: not by the last check, which
        // would report it as damaged.
        assert!(report.is_empty() && report.corrupt.is_empty(), "{report:?}");
        assert_eq!(
            std::fs::read_link(&reservation).unwrap().to_str(),
            Some(&*changed)
        );
        assert_taken(&net, pod.ip(), "listed by victim's record").await;
        pod.remove().await.unwrap();
        net.remove().await.unwrap();
    });
}

#[test]
fn volume_directories_go_only_once_no_sandbox_of_their_name_lives() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let pod = net.sandbox("web").create().await.unwrap();
        let volumes = store_dir(&ctx).join("volumes");
        // A live sandbox's directory with its id damaged, one of a name no
        // sandbox has, and one whose name is no sandbox instance.
        for d in ["web@bad1d", "ghost@1-2-3", "garbage"] {
            std::fs::create_dir_all(volumes.join(d).join("v")).unwrap();
        }
        let report = net.gc().await.unwrap();
        assert_eq!(report.volumes, [volumes.join("ghost@1-2-3")], "{report:?}");
        assert!(
            volumes.join("web@bad1d/v").is_dir(),
            "a live name's volumes went"
        );
        let d = damaged_at(&report, &volumes.join("garbage")).unwrap();
        assert!(d.reason.contains("not a sandbox instance"), "{d:?}");
        assert!(volumes.join("garbage").is_dir());
        // Once no sandbox is called web, its directory goes too.
        pod.remove().await.unwrap();
        let report = net.gc().await.unwrap();
        assert_eq!(report.volumes, [volumes.join("web@bad1d")], "{report:?}");
        std::fs::remove_dir_all(volumes.join("garbage")).unwrap();
        net.remove().await.unwrap();
    });
}

/// One way to damage a file's bytes; positions are taken modulo its length.
#[derive(Debug, Clone)]
enum Damage {
    Replace { at: usize, byte: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize },
    Truncate { len: usize },
    DuplicateLine { line: usize },
    SwapLines { a: usize, b: usize },
    Empty,
    Garbage(Vec<u8>),
}

impl Damage {
    fn apply(&self, bytes: &[u8]) -> Vec<u8> {
        let mut b = bytes.to_vec();
        let n = b.len();
        if n == 0 {
            // Only what adds bytes applies to an empty file.
            return match self {
                Damage::Insert { byte, .. } => vec![*byte],
                Damage::Garbage(g) => g.clone(),
                _ => b,
            };
        }
        let mut lines: Vec<Vec<u8>> = bytes
            .split_inclusive(|c| *c == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        match self {
            Damage::Replace { at, byte } => b[at % n] = *byte,
            Damage::Insert { at, byte } => b.insert(at % (n + 1), *byte),
            Damage::Delete { at } => {
                b.remove(at % n);
            }
            Damage::Truncate { len } => b.truncate(len % n),
            Damage::DuplicateLine { line } => {
                let l = lines[line % lines.len()].clone();
                lines.insert(line % lines.len(), l);
                b = lines.concat();
            }
            Damage::SwapLines { a, b: other } => {
                let k = lines.len();
                lines.swap(a % k, other % k);
                b = lines.concat();
            }
            Damage::Empty => b.clear(),
            Damage::Garbage(g) => b.clone_from(g),
        }
        b
    }
}

fn damage() -> impl Strategy<Value = Damage> {
    let byte = prop_oneof![Just(0u8), Just(b'\n'), Just(b'='), Just(b' '), any::<u8>()];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(at, byte)| Damage::Replace { at, byte }),
        (any::<usize>(), byte).prop_map(|(at, byte)| Damage::Insert { at, byte }),
        any::<usize>().prop_map(|at| Damage::Delete { at }),
        any::<usize>().prop_map(|len| Damage::Truncate { len }),
        any::<usize>().prop_map(|line| Damage::DuplicateLine { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Damage::SwapLines { a, b }),
        Just(Damage::Empty),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Damage::Garbage),
    ]
}

/// How many damage patterns the property test tries.
const CASES: u32 = 96;

/// Live sandboxes, persistent or not, with their records (path and
/// bytes) and their reservations.
struct Live {
    sandboxes: Vec<Sandbox>,
    records: Vec<(PathBuf, Vec<u8>)>,
    reservations: Vec<PathBuf>,
}

impl Live {
    async fn new(ctx: &Ctx, net: &Network) -> Live {
        let mut sandboxes = Vec::new();
        for (name, persistent) in [("a", true), ("b", false), ("c", true), ("d", false)] {
            let pod = net.sandbox(name).persistent(persistent).create().await;
            sandboxes.push(pod.unwrap());
        }
        let records = sandboxes
            .iter()
            .map(|s| {
                let p = record_path(ctx, s.name());
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        let reservations = sandboxes
            .iter()
            .map(|s| reservation_path(ctx, &s.ip().to_string()))
            .collect();
        Live {
            sandboxes,
            records,
            reservations,
        }
    }

    /// Apply `damages` (record index, damage) one after the other; the
    /// records that differ from what they were.
    fn damage(&self, damages: &[(usize, Damage)]) -> Vec<PathBuf> {
        for (i, d) in damages {
            let path = &self.records[*i].0;
            let damaged = d.apply(&std::fs::read(path).unwrap());
            std::fs::write(path, damaged).unwrap();
        }
        // After all of them: two damages may undo each other.
        self.records
            .iter()
            .filter(|(path, bytes)| std::fs::read(path).unwrap() != *bytes)
            .map(|(path, _)| path.clone())
            .collect()
    }

    fn repair(&self) {
        for (path, bytes) in &self.records {
            std::fs::write(path, bytes).unwrap();
        }
    }

    /// gc (by `fresh`) reported every changed record, released no live
    /// address, ended no live sandbox and touched no holder or link.
    fn assert_kept(&self, report: &GcReport, changed: &[PathBuf], what: &str) {
        for path in changed {
            assert!(
                damaged_at(report, path).is_some(),
                "{what}: not reported: {report:?}"
            );
        }
        for (s, r) in self.sandboxes.iter().zip(&self.reservations) {
            assert!(
                !report.addresses.contains(&s.ip()),
                "{what}: released {}",
                s.ip()
            );
            assert!(
                std::fs::symlink_metadata(r).is_ok(),
                "{what}: {} is free",
                s.ip()
            );
            assert_eq!(s.phase(), Phase::Running, "{what}: {} was ended", s.name());
        }
        assert!(
            report.holders.is_empty() && report.links.is_empty(),
            "{what}: {report:?}"
        );
    }

    /// No create by `fresh` is given a live sandbox's address, and asking
    /// for `target`'s is refused.
    async fn assert_no_create_gets_one(&self, fresh: &Network, target: usize, what: &str) {
        let probe = fresh.sandbox("probe").create().await.unwrap();
        assert!(
            self.sandboxes.iter().all(|s| s.ip() != probe.ip()),
            "{what}: a create was given {}, which a live sandbox holds",
            probe.ip()
        );
        remove_settled(fresh, probe).await;
        assert_taken(fresh, self.sandboxes[target].ip(), what).await;
    }
}

#[test]
fn whatever_damage_records_take_gc_keeps_every_live_address_and_creates_never_get_one() {
    in_netns(|ctx| async move {
        let net = network(&ctx).await;
        let live = Live::new(&ctx, &net).await;
        let n = live.sandboxes.len();
        let strategy = (proptest::collection::vec((0..n, damage()), 1..=2), 0..n);
        let mut runner = TestRunner::new(Config::with_cases(CASES));
        for case in 0..CASES {
            let (damages, target) = strategy.new_tree(&mut runner).unwrap().current();
            let what = format!("case {case}: {damages:?}");
            let changed = live.damage(&damages);
            // A network handle as a fresh process would open it.
            let fresh = network(&ctx).await;
            let report = fresh
                .gc()
                .await
                .unwrap_or_else(|e| panic!("{what}: gc: {e}"));
            live.assert_kept(&report, &changed, &what);
            live.assert_no_create_gets_one(&fresh, target, &what).await;
            live.repair();
        }
        let report = net.gc().await.unwrap();
        assert!(report.corrupt.is_empty() && report.is_empty(), "{report:?}");
        for s in live.sandboxes {
            s.remove().await.unwrap();
        }
        net.remove().await.unwrap();
    });
}
