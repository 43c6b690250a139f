//! Network policies with Kubernetes' NetworkPolicy semantics: which
//! sandboxes a policy selects, whether it isolates them for ingress, for
//! egress or both, and the rules that say what may still pass (peers by
//! labels or by address block, and ports). Values and their checks only;
//! `plan` says which kernel sets and rules they make. docs/policy.md
//! explains the semantics.

use std::net::IpAddr;

use super::selector::Selector;
use crate::error::{Error, Result};

/// A transport protocol: of a port mapping, or of a policy's [`Port`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// TCP: for a mapping, each connection to the host port gets one to
    /// the sandbox's port.
    Tcp,
    /// UDP: for a mapping, each client (source address and port) gets a
    /// flow of its own.
    Udp,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Protocol {
    /// The IP protocol number.
    pub(crate) fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A port of a rule: a protocol and a port or a range of ports (`port` and
/// `endPort` in a NetworkPolicy), or every port of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port {
    protocol: Protocol,
    range: Option<(u16, u16)>,
}

impl Port {
    /// TCP port `port`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for port 0.
    pub fn tcp(port: u16) -> Result<Port> {
        Port::range(Protocol::Tcp, port, port)
    }

    /// UDP port `port`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for port 0.
    pub fn udp(port: u16) -> Result<Port> {
        Port::range(Protocol::Udp, port, port)
    }

    /// Ports `first..=last` of `protocol`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for port 0 or a range whose end is below
    /// its start.
    pub fn range(protocol: Protocol, first: u16, last: u16) -> Result<Port> {
        if first == 0 {
            return Err(invalid(format!(
                "port 0 of {} is no port a rule can allow",
                protocol.name()
            )));
        }
        if last < first {
            return Err(invalid(format!(
                "the {} port range {first}-{last} ends before it starts",
                protocol.name()
            )));
        }
        Ok(Port {
            protocol,
            range: Some((first, last)),
        })
    }

    /// Every port of `protocol`.
    pub fn all(protocol: Protocol) -> Port {
        Port {
            protocol,
            range: None,
        }
    }

    /// Its protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Its first and last port; `None` for every port.
    pub fn ports(&self) -> Option<(u16, u16)> {
        self.range
    }
}

/// An address block (`ipBlock`): a CIDR and the blocks within it that it
/// leaves out (`except`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpBlock {
    cidr: (IpAddr, u8),
    except: Vec<(IpAddr, u8)>,
}

impl IpBlock {
    /// The block `addr/prefix` (host bits are cleared, as Kubernetes
    /// reads `10.0.0.1/8` as `10.0.0.0/8`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a prefix longer than the family's.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<IpBlock> {
        Ok(IpBlock {
            cidr: (network(addr, prefix)?, prefix),
            except: Vec::new(),
        })
    }

    /// Parse `a.b.c.d/n` or `x::/n`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `cidr` if it is no block.
    pub fn parse(cidr: &str) -> Result<IpBlock> {
        let (addr, prefix) = parse_cidr(cidr)?;
        IpBlock::new(addr, prefix)
    }

    /// Also leave out `cidr` (`except`), which must lie inside the block
    /// and be of its family.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a block of the other family or one not
    /// inside this one.
    pub fn except(mut self, cidr: &str) -> Result<IpBlock> {
        let (addr, prefix) = parse_cidr(cidr)?;
        let net = network(addr, prefix)?;
        let (base, base_prefix) = self.cidr;
        if net.is_ipv4() != base.is_ipv4() {
            return Err(invalid(format!(
                "except {cidr} is not of the family of the block {base}/{base_prefix}"
            )));
        }
        if prefix < base_prefix || network(net, base_prefix)? != base {
            return Err(invalid(format!(
                "except {cidr} is not inside the block {base}/{base_prefix}"
            )));
        }
        self.except.push((net, prefix));
        Ok(self)
    }

    /// The block: network address and prefix.
    pub fn cidr(&self) -> (IpAddr, u8) {
        self.cidr
    }

    /// The blocks it leaves out.
    pub fn excepted(&self) -> &[(IpAddr, u8)] {
        &self.except
    }
}

/// A peer of a rule: the sandboxes a selector picks (`podSelector`), or
/// an address block (`ipBlock`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// Sandboxes of the network whose labels the selector picks, now and
    /// later.
    Pods(Selector),
    /// Addresses: of sandboxes, of the host, or beyond.
    Block(IpBlock),
}

/// One rule of a direction: traffic passes if it is from (ingress) or to
/// (egress) any of the peers, *and* to any of the ports. No peers means
/// every peer; no ports means every port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    peers: Vec<Peer>,
    ports: Vec<Port>,
}

impl Rule {
    /// The rule that allows everything (every peer, every port).
    pub fn new() -> Rule {
        Rule::default()
    }

    /// Also allow the sandboxes `selector` picks.
    pub fn pods(mut self, selector: Selector) -> Rule {
        self.peers.push(Peer::Pods(selector));
        self
    }

    /// Also allow the addresses of `block`.
    pub fn block(mut self, block: IpBlock) -> Rule {
        self.peers.push(Peer::Block(block));
        self
    }

    /// Allow only these ports (with the other calls of `port`).
    pub fn port(mut self, port: Port) -> Rule {
        self.ports.push(port);
        self
    }

    /// Its peers (none: every peer).
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// Its ports (none: every port).
    pub fn ports(&self) -> &[Port] {
        &self.ports
    }
}

/// A network policy: it selects sandboxes by labels and isolates them
/// for ingress, egress or both; once isolated in a direction, a sandbox
/// takes only what some rule of some policy of that direction allows.
/// Replies to allowed connections always pass.
///
/// As in Kubernetes, a policy with no direction set isolates for ingress,
/// and egress rules make it isolate for egress too.
///
/// ```
/// use podnet::{Policy, Port, Rule, Selector};
/// # fn main() -> podnet::Result<()> {
/// let db = Selector::everything().label("app", "db")?;
/// let web = Selector::everything().label("app", "web")?;
/// // Only web pods may reach db pods, and only on TCP 5432.
/// let p = Policy::new("db-from-web", db)?
///     .ingress(Rule::new().pods(web).port(Port::tcp(5432)?));
/// assert!(p.isolates_ingress() && !p.isolates_egress());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    name: String,
    selector: Selector,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

/// The longest policy name.
const NAME_MAX: usize = 63;

impl Policy {
    /// A policy named `name` (a DNS label: lowercase letters, digits and
    /// `-`, at most 63) selecting what `selector` picks, isolating it for
    /// ingress with no rule yet: on its own, it denies all ingress.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a name that is no DNS label.
    pub fn new(name: &str, selector: Selector) -> Result<Policy> {
        check_name(name)?;
        Ok(Policy {
            name: name.to_owned(),
            selector,
            ingress: Some(Vec::new()),
            egress: None,
        })
    }

    /// Add an ingress rule (and isolate for ingress).
    pub fn ingress(mut self, rule: Rule) -> Policy {
        self.ingress.get_or_insert_with(Vec::new).push(rule);
        self
    }

    /// Add an egress rule (and isolate for egress).
    pub fn egress(mut self, rule: Rule) -> Policy {
        self.egress.get_or_insert_with(Vec::new).push(rule);
        self
    }

    /// Isolate for egress, with the egress rules given so far (none: deny
    /// all egress).
    pub fn isolate_egress(mut self) -> Policy {
        self.egress.get_or_insert_with(Vec::new);
        self
    }

    /// Do not isolate for ingress (`policyTypes: [Egress]`): drops the
    /// ingress rules given so far.
    pub fn without_ingress(mut self) -> Policy {
        self.ingress = None;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sandboxes it selects.
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    /// Whether it isolates the sandboxes it selects for ingress.
    pub fn isolates_ingress(&self) -> bool {
        self.ingress.is_some()
    }

    /// Whether it isolates the sandboxes it selects for egress.
    pub fn isolates_egress(&self) -> bool {
        self.egress.is_some()
    }

    /// Its ingress rules.
    pub fn ingress_rules(&self) -> &[Rule] {
        self.ingress.as_deref().unwrap_or_default()
    }

    /// Its egress rules.
    pub fn egress_rules(&self) -> &[Rule] {
        self.egress.as_deref().unwrap_or_default()
    }

    /// Check it for a network whose pools have the families `v4`, `v6`:
    /// an address block of a family the network has no pool of is
    /// refused (it could never match), as is a policy of no direction.
    pub(crate) fn check_for(&self, v4: bool, v6: bool) -> Result<()> {
        if self.ingress.is_none() && self.egress.is_none() {
            return Err(invalid(format!(
                "policy {:?} isolates neither ingress nor egress",
                self.name
            )));
        }
        for rule in self.ingress_rules().iter().chain(self.egress_rules()) {
            for peer in &rule.peers {
                if let Peer::Block(b) = peer {
                    let (addr, prefix) = b.cidr;
                    if (addr.is_ipv4() && !v4) || (addr.is_ipv6() && !v6) {
                        return Err(invalid(format!(
                            "policy {:?}: the block {addr}/{prefix} is of a family the network has no pool of",
                            self.name
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The same policy with its parts set directly (for the store's
    /// decoder, which checks each part as the builders do).
    pub(crate) fn from_parts(
        name: &str,
        selector: Selector,
        ingress: Option<Vec<Rule>>,
        egress: Option<Vec<Rule>>,
    ) -> Result<Policy> {
        check_name(name)?;
        Ok(Policy {
            name: name.to_owned(),
            selector,
            ingress,
            egress,
        })
    }

    pub(crate) fn ingress_opt(&self) -> Option<&[Rule]> {
        self.ingress.as_deref()
    }

    pub(crate) fn egress_opt(&self) -> Option<&[Rule]> {
        self.egress.as_deref()
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: "policy",
            name: name.to_owned(),
            reason: "a policy name is a DNS label: 1-63 of a-z, 0-9 and '-', not at either end"
                .to_owned(),
        })
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfig { reason }
}

/// `addr/prefix` with the host bits cleared.
pub(crate) fn network(addr: IpAddr, prefix: u8) -> Result<IpAddr> {
    match addr {
        IpAddr::V4(a) if prefix <= 32 => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            Ok(IpAddr::V4((u32::from(a) & mask).into()))
        }
        IpAddr::V6(a) if prefix <= 128 => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            Ok(IpAddr::V6((u128::from(a) & mask).into()))
        }
        _ => Err(invalid(format!(
            "prefix /{prefix} is longer than an address of {addr}'s family"
        ))),
    }
}

/// Parse `addr/prefix`.
pub(crate) fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8)> {
    let bad = || invalid(format!("{cidr:?} is no address block (addr/prefix)"));
    let (a, p) = cidr.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = a.parse().map_err(|_| bad())?;
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let prefix: u8 = p.parse().map_err(|_| bad())?;
    network(addr, prefix)?;
    Ok((addr, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_zero_or_an_inverted_range_is_refused() {
        assert!(matches!(Port::tcp(0), Err(Error::InvalidConfig { .. })));
        assert!(matches!(
            Port::range(Protocol::Udp, 81, 80),
            Err(Error::InvalidConfig { .. })
        ));
        assert_eq!(Port::tcp(80).unwrap().ports(), Some((80, 80)));
    }

    #[test]
    fn a_block_clears_host_bits_and_checks_its_excepts() {
        let b = IpBlock::parse("10.88.3.7/16").unwrap();
        assert_eq!(b.cidr(), ("10.88.0.0".parse().unwrap(), 16));
        assert!(b.clone().except("10.88.1.0/24").is_ok());
        assert!(b.clone().except("10.89.1.0/24").is_err());
        assert!(b.clone().except("10.0.0.0/8").is_err());
        assert!(b.clone().except("fd00:88::/64").is_err());
        assert!(IpBlock::parse("10.0.0.0/33").is_err());
        assert!(IpBlock::parse("10.0.0.0").is_err());
        assert!(IpBlock::parse("10.0.0.0/+8").is_err());
    }

    #[test]
    fn a_policy_isolates_ingress_by_default_and_egress_once_it_has_a_rule() {
        let p = Policy::new("p", Selector::everything()).unwrap();
        assert!(p.isolates_ingress() && !p.isolates_egress());
        let p = p.egress(Rule::new());
        assert!(p.isolates_egress());
        let p = p.without_ingress();
        assert!(!p.isolates_ingress() && p.isolates_egress());
    }

    #[test]
    fn a_block_of_a_family_without_a_pool_is_refused() {
        let p = Policy::new("p", Selector::everything())
            .unwrap()
            .ingress(Rule::new().block(IpBlock::parse("fd00:88::/64").unwrap()));
        assert!(p.check_for(true, true).is_ok());
        assert!(matches!(
            p.check_for(true, false),
            Err(Error::InvalidConfig { .. })
        ));
    }

    #[test]
    fn a_policy_name_is_a_dns_label() {
        for bad in ["", "A", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(Policy::new(bad, Selector::everything()).is_err(), "{bad:?}");
        }
        assert!(Policy::new("deny-all-1", Selector::everything()).is_ok());
    }
}
