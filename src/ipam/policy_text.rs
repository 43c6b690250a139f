//! The store's text form of a network's policies: a line per policy, its
//! directions and rules, then a check of everything above it. The decoder
//! takes any bytes and either gives back the policies or says the text is
//! not what the encoder writes. No I/O.
//!
//! ```text
//! policy <name> <selector>
//! in
//! rule <peers> <ports>
//! eg
//! rule <peers> <ports>
//! sum=<fnv-1a of the lines above, 16 hex digits>
//! ```
//!
//! `<peers>` and `<ports>` are `-` (every peer, every port) or `,`-joined
//! `pods:<selector>`, `block:<cidr>[!<except>...]` and `tcp/<first>-<last>`,
//! `udp/*`.

use crate::names::fnv1a;
use crate::policy::{parse_cidr, IpBlock, Peer, Policy, Port, Protocol, Rule, Selector};

/// The text of `policies`.
pub(crate) fn encode(policies: &[Policy]) -> String {
    let mut body = String::new();
    for p in policies {
        body.push_str(&format!("policy {} {}\n", p.name(), p.selector().encode()));
        for (tag, rules) in [("in", p.ingress_opt()), ("eg", p.egress_opt())] {
            let Some(rules) = rules else { continue };
            body.push_str(tag);
            body.push('\n');
            for r in rules {
                body.push_str(&format!("rule {} {}\n", peers(r), ports(r)));
            }
        }
    }
    let sum = fnv1a(body.as_bytes());
    format!("{body}sum={sum:016x}\n")
}

fn peers(r: &Rule) -> String {
    if r.peers().is_empty() {
        return "-".to_owned();
    }
    let items: Vec<String> = r
        .peers()
        .iter()
        .map(|p| match p {
            Peer::Pods(s) => format!("pods:{}", s.encode()),
            Peer::Block(b) => {
                let (a, n) = b.cidr();
                let mut t = format!("block:{a}/{n}");
                for (ea, en) in b.excepted() {
                    t.push_str(&format!("!{ea}/{en}"));
                }
                t
            }
        })
        .collect();
    items.join(",")
}

fn ports(r: &Rule) -> String {
    if r.ports().is_empty() {
        return "-".to_owned();
    }
    let items: Vec<String> = r
        .ports()
        .iter()
        .map(|p| match p.ports() {
            Some((a, b)) => format!("{}/{a}-{b}", p.protocol().name()),
            None => format!("{}/*", p.protocol().name()),
        })
        .collect();
    items.join(",")
}

/// Read [`encode`]'s text; `Err` with the reason if it is not that text
/// (damaged, cut short, or changed by hand).
pub(crate) fn decode(text: &str) -> Result<Vec<Policy>, &'static str> {
    let Some(body_end) = text.rfind("sum=") else {
        return Err("it has no sum= line");
    };
    let (body, sum) = text.split_at(body_end);
    if sum.trim_end_matches('\n') != format!("sum={:016x}", fnv1a(body.as_bytes())) {
        return Err("its policies do not match their check");
    }
    let bad = "a line is not one of a policy";
    let mut out: Vec<Policy> = Vec::new();
    let mut cur: Option<Reading> = None;
    for line in body.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        match words.as_slice() {
            ["policy", name, sel] => {
                finish(cur.take(), &mut out)?;
                cur = Some(Reading {
                    name: (*name).to_owned(),
                    selector: Selector::decode(sel).ok_or(bad)?,
                    ingress: None,
                    egress: None,
                    in_egress: false,
                });
            }
            ["in"] => {
                let c = cur.as_mut().ok_or(bad)?;
                if c.ingress.is_some() || c.egress.is_some() {
                    return Err(bad);
                }
                c.ingress = Some(Vec::new());
                c.in_egress = false;
            }
            ["eg"] => {
                let c = cur.as_mut().ok_or(bad)?;
                if c.egress.is_some() {
                    return Err(bad);
                }
                c.egress = Some(Vec::new());
                c.in_egress = true;
            }
            ["rule", peers, ports] => {
                let c = cur.as_mut().ok_or(bad)?;
                let rule = decode_rule(peers, ports).ok_or(bad)?;
                let list = if c.in_egress {
                    c.egress.as_mut()
                } else {
                    c.ingress.as_mut()
                };
                list.ok_or(bad)?.push(rule);
            }
            _ => return Err(bad),
        }
    }
    finish(cur, &mut out)?;
    Ok(out)
}

/// The policy being read: its parts so far, and which direction takes
/// the rules that follow.
struct Reading {
    name: String,
    selector: Selector,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
    in_egress: bool,
}

/// Add the policy read to `out`.
fn finish(cur: Option<Reading>, out: &mut Vec<Policy>) -> Result<(), &'static str> {
    let Some(r) = cur else { return Ok(()) };
    if out.iter().any(|p| p.name() == r.name) {
        return Err("a policy name comes twice");
    }
    let p = Policy::from_parts(&r.name, r.selector, r.ingress, r.egress)
        .map_err(|_| "a policy name is not a DNS label")?;
    out.push(p);
    Ok(())
}

fn decode_rule(peers: &str, ports: &str) -> Option<Rule> {
    let mut rule = Rule::new();
    if peers != "-" {
        for item in peers.split(',') {
            rule = match item.split_once(':')? {
                ("pods", sel) => rule.pods(Selector::decode(sel)?),
                ("block", spec) => {
                    let mut parts = spec.split('!');
                    let (addr, prefix) = parse_cidr(parts.next()?).ok()?;
                    let mut b = IpBlock::new(addr, prefix).ok()?;
                    if b.cidr() != (addr, prefix) {
                        return None;
                    }
                    for e in parts {
                        b = b.except(e).ok()?;
                    }
                    rule.block(b)
                }
                _ => return None,
            };
        }
    }
    if ports != "-" {
        for item in ports.split(',') {
            let (proto, range) = item.split_once('/')?;
            let proto = match proto {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return None,
            };
            let port = if range == "*" {
                Port::all(proto)
            } else {
                let (a, b) = range.split_once('-')?;
                let num = |s: &str| {
                    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                        None
                    } else {
                        s.parse::<u16>().ok()
                    }
                };
                Port::range(proto, num(a)?, num(b)?).ok()?
            };
            rule = rule.port(port);
        }
    }
    Some(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Policy> {
        let web = Selector::everything().label("app", "web").unwrap();
        let db = Selector::everything().label("app", "db").unwrap();
        vec![
            Policy::new("deny-all", Selector::everything()).unwrap(),
            Policy::new("db", db)
                .unwrap()
                .ingress(
                    Rule::new()
                        .pods(web.clone())
                        .block(
                            IpBlock::parse("10.88.0.0/16")
                                .unwrap()
                                .except("10.88.1.0/24")
                                .unwrap(),
                        )
                        .port(Port::tcp(80).unwrap())
                        .port(Port::range(Protocol::Udp, 80, 81).unwrap()),
                )
                .egress(Rule::new().port(Port::all(Protocol::Udp))),
            Policy::new("eg-only", web)
                .unwrap()
                .without_ingress()
                .isolate_egress(),
        ]
    }

    #[test]
    fn policies_are_read_back_as_encoded() {
        let ps = sample();
        assert_eq!(decode(&encode(&ps)).unwrap(), ps);
        assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    }

    #[test]
    fn a_changed_byte_is_refused() {
        let text = encode(&sample());
        let changed = text.replacen("tcp/80-80", "tcp/81-81", 1);
        assert!(decode(&changed).is_err());
        assert!(decode(&text[..text.len() / 2]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn the_decoder_survives_any_bytes(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = decode(&text);
            // And with a valid check, so the parser behind it is reached.
            let body = text.replace("sum=", "");
            let _ = decode(&format!("{body}sum={:016x}\n", fnv1a(body.as_bytes())));
        }

        #[test]
        fn any_line_mix_with_a_valid_check_is_decoded_or_refused(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("in".to_owned()),
                    proptest::strategy::Just("eg".to_owned()),
                    "policy [a-z]{1,3} (\\*|a=b|a@exists)",
                    "rule (-|pods:\\*|block:10\\.0\\.0\\.0/[0-9]{1,2}(!10\\.0\\.[0-9]\\.0/24)?) (-|tcp/[0-9]{1,5}-[0-9]{1,5}|udp/\\*)",
                ],
                0..8,
            )
        ) {
            let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
            let text = format!("{body}sum={:016x}\n", fnv1a(body.as_bytes()));
            if let Ok(ps) = decode(&text) {
                proptest::prop_assert_eq!(decode(&encode(&ps)).unwrap(), ps);
            }
        }
    }
}
