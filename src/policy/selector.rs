//! Label selectors with Kubernetes' semantics: `matchLabels` and
//! `matchExpressions` (`In`, `NotIn`, `Exists`, `DoesNotExist`), all of
//! which must hold; an empty selector selects everything. No I/O.

use super::labels::{check_key, check_value, Labels};
use crate::error::{Error, Result};

/// One requirement of a selector on one label key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// The key is set to one of the values.
    In {
        /// The label key.
        key: String,
        /// The values it may have (at least one).
        values: Vec<String>,
    },
    /// The key is not set, or is set to none of the values.
    NotIn {
        /// The label key.
        key: String,
        /// The values it may not have (at least one).
        values: Vec<String>,
    },
    /// The key is set, to any value.
    Exists {
        /// The label key.
        key: String,
    },
    /// The key is not set.
    DoesNotExist {
        /// The label key.
        key: String,
    },
}

impl Requirement {
    /// Check the key and the values; `In` and `NotIn` need at least one
    /// value, as Kubernetes' validation says.
    fn check(&self) -> Result<()> {
        match self {
            Requirement::In { key, values } | Requirement::NotIn { key, values } => {
                check_key(key)?;
                if values.is_empty() {
                    return Err(Error::InvalidConfig {
                        reason: format!(
                            "a selector's In or NotIn on {key:?} needs at least one value"
                        ),
                    });
                }
                values.iter().try_for_each(|v| check_value(key, v))
            }
            Requirement::Exists { key } | Requirement::DoesNotExist { key } => check_key(key),
        }
    }

    /// Whether `labels` meet it.
    fn holds(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In { key, values } => labels
                .get(key)
                .is_some_and(|v| values.iter().any(|x| x == v)),
            Requirement::NotIn { key, values } => labels
                .get(key)
                .is_none_or(|v| values.iter().all(|x| x != v)),
            Requirement::Exists { key } => labels.get(key).is_some(),
            Requirement::DoesNotExist { key } => labels.get(key).is_none(),
        }
    }
}

/// A label selector: every label of `match_labels` and every requirement
/// must hold. The empty selector selects every sandbox, as `{}` does in a
/// NetworkPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    match_labels: Labels,
    expressions: Vec<Requirement>,
}

impl Selector {
    /// The empty selector: every sandbox.
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// Also require label `key` to be `value` (`matchLabels`).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a key or value that is no label's.
    pub fn label(mut self, key: &str, value: &str) -> Result<Selector> {
        self.match_labels.insert(key, value)?;
        Ok(self)
    }

    /// Also require `r` (`matchExpressions`).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a key or value that is no label's;
    /// [`Error::InvalidConfig`] for an `In` or `NotIn` without values.
    pub fn require(mut self, r: Requirement) -> Result<Selector> {
        r.check()?;
        self.expressions.push(r);
        Ok(self)
    }

    /// Whether a sandbox with `labels` is selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|r| r.holds(labels))
    }
}

impl Selector {
    /// The store's form, one token without spaces or commas: `*` for the
    /// empty selector, else `;`-joined `k=v` (matchLabels), `k@in=v|w`,
    /// `k@notin=v|w`, `k@exists`, `k@absent`.
    pub(crate) fn encode(&self) -> String {
        let mut items: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.expressions {
            items.push(match r {
                Requirement::In { key, values } => format!("{key}@in={}", values.join("|")),
                Requirement::NotIn { key, values } => format!("{key}@notin={}", values.join("|")),
                Requirement::Exists { key } => format!("{key}@exists"),
                Requirement::DoesNotExist { key } => format!("{key}@absent"),
            });
        }
        if items.is_empty() {
            "*".to_owned()
        } else {
            items.join(";")
        }
    }

    /// Read [`encode`](Selector::encode)'s form, checking every key and
    /// value; `None` if it is not that form.
    pub(crate) fn decode(token: &str) -> Option<Selector> {
        let mut s = Selector::everything();
        if token == "*" {
            return Some(s);
        }
        for item in token.split(';') {
            let values = |v: &str| v.split('|').map(str::to_owned).collect::<Vec<_>>();
            s = if let Some((key, rest)) = item.split_once('@') {
                let key = key.to_owned();
                let r = match rest.split_once('=') {
                    Some(("in", v)) => Requirement::In {
                        key,
                        values: values(v),
                    },
                    Some(("notin", v)) => Requirement::NotIn {
                        key,
                        values: values(v),
                    },
                    None if rest == "exists" => Requirement::Exists { key },
                    None if rest == "absent" => Requirement::DoesNotExist { key },
                    _ => return None,
                };
                s.require(r).ok()?
            } else {
                let (k, v) = item.split_once('=')?;
                if s.match_labels.get(k).is_some() {
                    return None;
                }
                s.label(k, v).ok()?
            };
        }
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied()).unwrap()
    }

    fn vals(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_empty_selector_selects_every_sandbox() {
        assert!(Selector::everything().matches(&Labels::new()));
        assert!(Selector::everything().matches(&labels(&[("app", "web")])));
    }

    #[test]
    fn match_labels_select_the_sandboxes_that_have_all_of_them() {
        let s = Selector::everything()
            .label("app", "web")
            .unwrap()
            .label("tier", "front")
            .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "front"), ("x", "y")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("tier", "front")])));
    }

    #[test]
    fn each_operator_has_kubernetes_meaning() {
        let web = labels(&[("app", "web")]);
        let db = labels(&[("app", "db")]);
        let none = Labels::new();
        let sel = |r| Selector::everything().require(r).unwrap();
        let key = || "app".to_owned();
        let is_in = sel(Requirement::In {
            key: key(),
            values: vals(&["web", "api"]),
        });
        assert!(is_in.matches(&web) && !is_in.matches(&db) && !is_in.matches(&none));
        let not_in = sel(Requirement::NotIn {
            key: key(),
            values: vals(&["web"]),
        });
        assert!(!not_in.matches(&web) && not_in.matches(&db) && not_in.matches(&none));
        let exists = sel(Requirement::Exists { key: key() });
        assert!(exists.matches(&web) && exists.matches(&db) && !exists.matches(&none));
        let absent = sel(Requirement::DoesNotExist { key: key() });
        assert!(!absent.matches(&web) && absent.matches(&none));
    }

    #[test]
    fn a_bad_requirement_is_refused() {
        let empty = Requirement::In {
            key: "app".into(),
            values: vec![],
        };
        assert!(matches!(
            Selector::everything().require(empty),
            Err(Error::InvalidConfig { .. })
        ));
        let bad_key = Requirement::Exists { key: "-app".into() };
        assert!(matches!(
            Selector::everything().require(bad_key),
            Err(Error::InvalidName { .. })
        ));
    }

    #[test]
    fn a_selector_is_read_back_as_encoded() {
        let s = Selector::everything()
            .label("app", "web")
            .unwrap()
            .require(Requirement::In {
                key: "example.com/tier".into(),
                values: vals(&["a", "b"]),
            })
            .unwrap()
            .require(Requirement::DoesNotExist { key: "x".into() })
            .unwrap()
            .require(Requirement::Exists { key: "y".into() })
            .unwrap()
            .require(Requirement::NotIn {
                key: "z".into(),
                values: vals(&["c"]),
            })
            .unwrap();
        assert_eq!(Selector::decode(&s.encode()), Some(s));
        let all = Selector::everything();
        assert_eq!(Selector::decode(&all.encode()), Some(all));
        for bad in ["", "a", "a@maybe", "a@in=-x", "a=b;a=c", "-A=b"] {
            assert_eq!(Selector::decode(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn a_selector_decoder_survives_any_text(token in "\\PC{0,40}") {
            let _ = Selector::decode(&token);
        }

        #[test]
        fn a_match_labels_selector_selects_exactly_the_supersets(
            want in proptest::collection::btree_map("[a-c]", "[x-z]", 0..3),
            have in proptest::collection::btree_map("[a-c]", "[x-z]", 0..3),
        ) {
            let mut s = Selector::everything();
            for (k, v) in &want {
                s = s.label(k, v).unwrap();
            }
            let l = Labels::from_pairs(&have).unwrap();
            let subset = want.iter().all(|(k, v)| have.get(k) == Some(v));
            proptest::prop_assert_eq!(s.matches(&l), subset);
        }

        #[test]
        fn in_and_not_in_of_the_same_values_are_complements(
            values in proptest::collection::vec("[x-z]", 1..3),
            have in proptest::option::of("[w-z]"),
        ) {
            let mut pairs = Vec::new();
            if let Some(v) = &have {
                pairs.push(("k", v.as_str()));
            }
            let l = labels(&pairs);
            let is_in = Selector::everything()
                .require(Requirement::In { key: "k".into(), values: values.clone() })
                .unwrap();
            let not_in = Selector::everything()
                .require(Requirement::NotIn { key: "k".into(), values })
                .unwrap();
            proptest::prop_assert_ne!(is_in.matches(&l), not_in.matches(&l));
        }
    }
}
