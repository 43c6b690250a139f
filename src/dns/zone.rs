//! The names a network's DNS answers for: its live sandboxes' names and
//! aliases and their addresses, looked up by name (under the network's
//! domain or bare) and by address (reverse names of the pools). No I/O.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use ipnetwork::IpNetwork;

/// A live sandbox, as DNS sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub name: String,
    /// Whether `name` is a DNS name too: a sandbox's is; an attachment's
    /// (the store's hash of its key) is not, and it is known by its
    /// aliases only.
    pub named: bool,
    pub aliases: Vec<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// What a query name is to the zone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup<'a> {
    /// Sandboxes of that name or alias (one for a name; any number for an
    /// alias), in the order this query gets them.
    Found(Vec<&'a Entry>),
    /// The address of a pool's reverse name, and the sandbox that has it.
    Pointer(&'a Entry),
    /// A name under the domain, or a pool's reverse name, that nothing
    /// has: NXDOMAIN, with authority.
    NoSuchName,
    /// The domain itself: it exists, with no records of its own.
    Apex,
    /// Not the network's: forwarded.
    Elsewhere,
}

/// The live sandboxes of one network.
#[derive(Debug)]
pub(crate) struct Zone {
    /// Lowercase, no dot at either end.
    domain: String,
    pools: Vec<IpNetwork>,
    entries: HashMap<String, Entry>,
    /// A name or alias: the sandboxes that carry it, sorted.
    names: HashMap<String, Vec<String>>,
    addrs: HashMap<IpAddr, String>,
    /// Turns the order of an alias's sandboxes with each query.
    turn: AtomicU32,
}

impl Zone {
    pub(crate) fn new(domain: &str, pools: Vec<IpNetwork>) -> Zone {
        Zone {
            domain: domain.trim_matches('.').to_ascii_lowercase(),
            pools,
            entries: HashMap::new(),
            names: HashMap::new(),
            addrs: HashMap::new(),
            turn: AtomicU32::new(0),
        }
    }

    /// Add a sandbox, replacing one of its name.
    pub(crate) fn insert(&mut self, entry: Entry) {
        self.remove(&entry.name);
        for n in names_of(&entry) {
            let list = self.names.entry(n.clone()).or_default();
            if let Err(at) = list.binary_search(&entry.name) {
                list.insert(at, entry.name.clone());
            }
        }
        for a in addrs_of(&entry) {
            self.addrs.insert(a, entry.name.clone());
        }
        self.entries.insert(entry.name.clone(), entry);
    }

    /// Take sandbox `name` out; whether it was in.
    pub(crate) fn remove(&mut self, name: &str) -> bool {
        let Some(old) = self.entries.remove(name) else {
            return false;
        };
        for n in names_of(&old) {
            if let Some(list) = self.names.get_mut(n) {
                list.retain(|s| s != name);
                if list.is_empty() {
                    self.names.remove(n);
                }
            }
        }
        for a in addrs_of(&old) {
            if self.addrs.get(&a).is_some_and(|s| s == name) {
                self.addrs.remove(&a);
            }
        }
        true
    }

    /// Take every sandbox out.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.names.clear();
        self.addrs.clear();
    }

    /// The sandboxes that `name` (a sandbox name or alias, bare or under
    /// the domain) resolves to, in this query's turn; empty if none.
    pub(crate) fn resolve(&self, name: &str) -> Vec<&Entry> {
        match self.lookup(name) {
            Lookup::Found(found) => found,
            _ => Vec::new(),
        }
    }

    /// What the query name `qname` (any case, with or without the final
    /// dot) is to this zone.
    pub(crate) fn lookup(&self, qname: &str) -> Lookup<'_> {
        let q = qname
            .strip_suffix('.')
            .unwrap_or(qname)
            .to_ascii_lowercase();
        if q == self.domain {
            return Lookup::Apex;
        }
        if let Some(addr) = reverse_addr(&q) {
            if !self.pools.iter().any(|p| p.contains(addr)) {
                return Lookup::Elsewhere;
            }
            return match self.addrs.get(&addr).and_then(|n| self.entries.get(n)) {
                Some(e) => Lookup::Pointer(e),
                None => Lookup::NoSuchName,
            };
        }
        let (label, under_domain) = match q
            .strip_suffix(self.domain.as_str())
            .and_then(|l| l.strip_suffix('.'))
        {
            Some(label) => (label, true),
            None => (q.as_str(), false),
        };
        if label.contains('.') || label.is_empty() {
            return if under_domain {
                Lookup::NoSuchName
            } else {
                Lookup::Elsewhere
            };
        }
        match self.names.get(label) {
            Some(list) if !list.is_empty() => {
                let mut found: Vec<&Entry> =
                    list.iter().filter_map(|n| self.entries.get(n)).collect();
                if found.len() > 1 {
                    let turn = self.turn.fetch_add(1, Ordering::Relaxed) as usize;
                    let at = turn % found.len();
                    found.rotate_left(at);
                }
                Lookup::Found(found)
            }
            // A bare name that is not a sandbox's may be a host's: the
            // upstream says. Under the domain, nothing else exists.
            _ if under_domain => Lookup::NoSuchName,
            _ => Lookup::Elsewhere,
        }
    }

    /// The fully qualified name of sandbox `e`, with the final dot: its
    /// name, or for an attachment its first alias.
    pub(crate) fn fqdn(&self, e: &Entry) -> String {
        let name = match (e.named, e.aliases.first()) {
            (false, Some(alias)) => alias,
            _ => &e.name,
        };
        format!("{name}.{}.", self.domain)
    }
}

/// The DNS names of `e`: its name (if it is one) and its aliases.
fn names_of(e: &Entry) -> impl Iterator<Item = &String> {
    e.named.then_some(&e.name).into_iter().chain(&e.aliases)
}

fn addrs_of(e: &Entry) -> impl Iterator<Item = IpAddr> {
    e.ipv4
        .map(IpAddr::V4)
        .into_iter()
        .chain(e.ipv6.map(IpAddr::V6))
}

/// The address of a full reverse name (`4.3.2.1.in-addr.arpa`, or the 32
/// nibbles under `ip6.arpa`), lowercase and without the final dot.
pub(crate) fn reverse_addr(q: &str) -> Option<IpAddr> {
    if let Some(v4) = q.strip_suffix(".in-addr.arpa") {
        let mut octets = [0u8; 4];
        let mut n = 0;
        for part in v4.split('.') {
            // Decimal, no sign, no leading zero: one spelling an address.
            if n == 4 || part.is_empty() || (part.len() > 1 && part.starts_with('0')) {
                return None;
            }
            if !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            octets[3 - n] = part.parse().ok()?;
            n += 1;
        }
        return (n == 4).then(|| IpAddr::V4(Ipv4Addr::from(octets)));
    }
    let v6 = q.strip_suffix(".ip6.arpa")?;
    let mut bits: u128 = 0;
    let mut n = 0;
    for part in v6.split('.') {
        let [c] = part.as_bytes() else {
            return None;
        };
        let nibble = char::from(*c).to_digit(16)?;
        if n == 32 {
            return None;
        }
        bits |= u128::from(nibble) << (4 * n);
        n += 1;
    }
    (n == 32).then(|| IpAddr::V6(Ipv6Addr::from(bits)))
}

/// The reverse name of `addr`, with the final dot.
#[cfg(test)]
pub(crate) fn reverse_name(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => {
            let [a, b, c, d] = a.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mut out = String::with_capacity(73);
            for i in 0..32 {
                let nibble = (bits >> (4 * i)) & 0xf;
                out += &format!("{nibble:x}.");
            }
            out + "ip6.arpa."
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(name: &str, v4: &str, aliases: &[&str]) -> Entry {
        Entry {
            name: name.into(),
            named: true,
            aliases: aliases.iter().map(|a| (*a).into()).collect(),
            ipv4: Some(v4.parse().unwrap()),
            ipv6: None,
        }
    }

    fn zone() -> Zone {
        let mut z = Zone::new("podnet.internal", vec!["10.88.0.0/16".parse().unwrap()]);
        z.insert(entry("web", "10.88.0.2", &["front"]));
        z.insert(entry("db", "10.88.0.3", &["front"]));
        z
    }

    fn names(l: Lookup<'_>) -> Vec<String> {
        match l {
            Lookup::Found(v) => v.into_iter().map(|e| e.name.clone()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_name_resolves_bare_and_under_the_domain_in_any_case() {
        let z = zone();
        assert_eq!(names(z.lookup("web")), ["web"]);
        assert_eq!(names(z.lookup("WEB.Podnet.Internal.")), ["web"]);
    }

    #[test]
    fn an_unknown_name_under_the_domain_is_no_such_name_and_a_bare_one_is_elsewhere() {
        let z = zone();
        assert_eq!(z.lookup("nope.podnet.internal"), Lookup::NoSuchName);
        assert_eq!(z.lookup("a.web.podnet.internal"), Lookup::NoSuchName);
        assert_eq!(z.lookup("nope"), Lookup::Elsewhere);
        assert_eq!(z.lookup("example.com."), Lookup::Elsewhere);
        assert_eq!(z.lookup("podnet.internal."), Lookup::Apex);
    }

    #[test]
    fn a_shared_alias_gives_every_sandbox_and_turns_with_each_query() {
        let z = zone();
        let first = names(z.lookup("front"));
        let second = names(z.lookup("front"));
        assert_eq!(first.len(), 2);
        assert_eq!(first[0], second[1]);
        assert_eq!(first[1], second[0]);
    }

    #[test]
    fn a_removed_sandbox_is_gone_from_its_names_and_addresses() {
        let mut z = zone();
        assert!(z.remove("web"));
        assert_eq!(names(z.lookup("front")), ["db"]);
        assert_eq!(z.lookup("web.podnet.internal"), Lookup::NoSuchName);
        assert_eq!(z.lookup("2.0.88.10.in-addr.arpa"), Lookup::NoSuchName);
        assert!(!z.remove("web"));
    }

    #[test]
    fn a_pool_address_has_a_pointer_and_others_are_elsewhere() {
        let z = zone();
        match z.lookup("3.0.88.10.in-addr.arpa.") {
            Lookup::Pointer(e) => assert_eq!(z.fqdn(e), "db.podnet.internal."),
            other => panic!("{other:?}"),
        }
        assert_eq!(z.lookup("9.0.88.10.in-addr.arpa"), Lookup::NoSuchName);
        assert_eq!(z.lookup("1.1.1.1.in-addr.arpa"), Lookup::Elsewhere);
    }

    #[test]
    fn reverse_names_are_refused_unless_spelled_as_one_address() {
        for bad in [
            "1.2.3.in-addr.arpa",
            "01.2.3.4.in-addr.arpa",
            "1.2.3.4.5.in-addr.arpa",
            "256.1.1.1.in-addr.arpa",
            "+1.2.3.4.in-addr.arpa",
            "a.ip6.arpa",
        ] {
            assert_eq!(reverse_addr(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn reverse_names_round_trip(bits: u128, v4: u32) {
            for a in [IpAddr::V6(Ipv6Addr::from(bits)), IpAddr::V4(Ipv4Addr::from(v4))] {
                let name = reverse_name(a);
                prop_assert_eq!(reverse_addr(name.strip_suffix('.').unwrap()), Some(a));
            }
        }

        #[test]
        fn lookup_of_any_text_never_panics(q in "\\PC{0,80}") {
            let z = zone();
            let _ = z.lookup(&q);
            let _ = reverse_addr(&q);
        }
    }
}
