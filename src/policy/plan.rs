//! What a network's policies make in the kernel, as plain values: the
//! address sets (keyed by address, so a new sandbox or a label change only
//! adds or deletes elements) and, per policy and direction, the rules that
//! allow. `link::nft` writes it as nf_tables messages; docs/policy.md
//! draws the chains. No I/O.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::labels::Labels;
use super::rule::{IpBlock, Peer, Policy, Port};

/// The set of the sandboxes isolated for ingress (selected by some policy
/// that isolates ingress), without its family's suffix.
pub(crate) const INGRESS_ISOLATED: &str = "isolated.in";
/// The same for egress.
pub(crate) const EGRESS_ISOLATED: &str = "isolated.eg";

/// The name of set `base` of addresses of family `v6` (sets hold one
/// family each).
pub(crate) fn set_name(base: &str, v6: bool) -> String {
    format!("{base}{}", if v6 { "6" } else { "4" })
}

/// The peer a rule matches: the addresses of a set (by its base name), or
/// a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerMatch {
    Set(String),
    Block(IpBlock),
}

/// One allowing rule: from (ingress) or to (egress) the peer, if any, on
/// the port, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Allow {
    pub peer: Option<PeerMatch>,
    pub port: Option<Port>,
}

/// A policy's part of the plan: the set of the sandboxes it selects (base
/// name), and the allowing rules of each direction it isolates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Compiled {
    pub name: String,
    pub selected: String,
    pub ingress: Option<Vec<Allow>>,
    pub egress: Option<Vec<Allow>>,
}

impl Compiled {
    /// The policy's chain of direction `egress`.
    pub(crate) fn chain(&self, egress: bool) -> String {
        format!("{}.{}", self.name, if egress { "eg" } else { "in" })
    }
}

/// The base name of the set of peer `k` of rule `r` of `policy`'s
/// direction `dir` ("in", "eg").
fn peer_set(policy: &str, dir: &str, r: usize, k: usize) -> String {
    format!("{policy}.{dir}{r}.{k}")
}

/// The allowing rules of `rules`: the product of each rule's peers and
/// ports (a rule with none of one stands for every one).
fn allows(policy: &str, dir: &str, rules: &[super::rule::Rule]) -> Vec<Allow> {
    let mut out = Vec::new();
    for (r, rule) in rules.iter().enumerate() {
        let peers: Vec<Option<PeerMatch>> = if rule.peers().is_empty() {
            vec![None]
        } else {
            rule.peers()
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    Some(match p {
                        Peer::Pods(_) => PeerMatch::Set(peer_set(policy, dir, r, k)),
                        Peer::Block(b) => PeerMatch::Block(b.clone()),
                    })
                })
                .collect()
        };
        let ports: Vec<Option<Port>> = if rule.ports().is_empty() {
            vec![None]
        } else {
            rule.ports().iter().copied().map(Some).collect()
        };
        for peer in &peers {
            for port in &ports {
                out.push(Allow {
                    peer: peer.clone(),
                    port: *port,
                });
            }
        }
    }
    out
}

/// The plan of `policies`, in their order (which does not change what
/// passes: policies add up).
pub(crate) fn compile(policies: &[Policy]) -> Vec<Compiled> {
    policies
        .iter()
        .map(|p| Compiled {
            name: p.name().to_owned(),
            selected: format!("{}.sel", p.name()),
            ingress: p.ingress_opt().map(|r| allows(p.name(), "in", r)),
            egress: p.egress_opt().map(|r| allows(p.name(), "eg", r)),
        })
        .collect()
}

/// The base names of the sets a sandbox with `labels` belongs in.
pub(crate) fn memberships(policies: &[Policy], labels: &Labels) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for p in policies {
        if p.selector().matches(labels) {
            out.insert(format!("{}.sel", p.name()));
            if p.isolates_ingress() {
                out.insert(INGRESS_ISOLATED.to_owned());
            }
            if p.isolates_egress() {
                out.insert(EGRESS_ISOLATED.to_owned());
            }
        }
        for (dir, rules) in [("in", p.ingress_rules()), ("eg", p.egress_rules())] {
            for (r, rule) in rules.iter().enumerate() {
                for (k, peer) in rule.peers().iter().enumerate() {
                    if let Peer::Pods(s) = peer {
                        if s.matches(labels) {
                            out.insert(peer_set(p.name(), dir, r, k));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The elements to add and to delete, as (set name, address), when a
/// sandbox's addresses and labels go from `old` to `new` (`None`: it is
/// not there).
pub(crate) type Delta = (Vec<(String, IpAddr)>, Vec<(String, IpAddr)>);

/// See [`Delta`].
pub(crate) fn delta(
    policies: &[Policy],
    old: Option<(&[IpAddr], &Labels)>,
    new: Option<(&[IpAddr], &Labels)>,
) -> Delta {
    let elems = |m: Option<(&[IpAddr], &Labels)>| -> BTreeSet<(String, IpAddr)> {
        let Some((addrs, labels)) = m else {
            return BTreeSet::new();
        };
        let sets = memberships(policies, labels);
        let mut out = BTreeSet::new();
        for base in &sets {
            for a in addrs {
                out.insert((set_name(base, a.is_ipv6()), *a));
            }
        }
        out
    };
    let (before, after) = (elems(old), elems(new));
    (
        after.difference(&before).cloned().collect(),
        before.difference(&after).cloned().collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Rule, Selector};

    fn sel(k: &str, v: &str) -> Selector {
        Selector::everything().label(k, v).unwrap()
    }

    fn labels(k: &str, v: &str) -> Labels {
        Labels::from_pairs([(k, v)]).unwrap()
    }

    #[test]
    fn a_rule_allows_the_product_of_its_peers_and_ports() {
        let p = Policy::new("p", sel("app", "db"))
            .unwrap()
            .ingress(
                Rule::new()
                    .pods(sel("app", "web"))
                    .block(crate::policy::IpBlock::parse("10.0.0.0/8").unwrap())
                    .port(Port::tcp(80).unwrap())
                    .port(Port::udp(81).unwrap()),
            )
            .ingress(Rule::new());
        let c = &compile(&[p])[0];
        let ingress = c.ingress.as_ref().unwrap();
        assert_eq!(ingress.len(), 5);
        assert_eq!(ingress[0].peer, Some(PeerMatch::Set("p.in0.0".into())));
        assert_eq!(
            ingress[4],
            Allow {
                peer: None,
                port: None
            }
        );
        assert!(c.egress.is_none());
    }

    #[test]
    fn a_sandbox_belongs_in_the_sets_whose_selectors_pick_it() {
        let p = Policy::new("p", sel("app", "db"))
            .unwrap()
            .ingress(Rule::new().pods(sel("app", "web")));
        let ps = [p];
        let db = memberships(&ps, &labels("app", "db"));
        assert_eq!(
            db.into_iter().collect::<Vec<_>>(),
            vec![INGRESS_ISOLATED.to_owned(), "p.sel".to_owned()]
        );
        let web = memberships(&ps, &labels("app", "web"));
        assert_eq!(
            web.into_iter().collect::<Vec<_>>(),
            vec!["p.in0.0".to_owned()]
        );
        assert!(memberships(&ps, &Labels::new()).is_empty());
    }

    #[test]
    fn a_label_change_moves_the_address_between_sets() {
        let ps = [Policy::new("p", sel("app", "db")).unwrap()];
        let a: IpAddr = "10.88.0.5".parse().unwrap();
        let (add, del) = delta(
            &ps,
            Some((&[a], &labels("app", "web"))),
            Some((&[a], &labels("app", "db"))),
        );
        assert_eq!(
            add,
            vec![("isolated.in4".to_owned(), a), ("p.sel4".to_owned(), a)]
        );
        assert!(del.is_empty());
        let (add, del) = delta(&ps, Some((&[a], &labels("app", "db"))), None);
        assert!(add.is_empty());
        assert_eq!(del.len(), 2);
    }
}
