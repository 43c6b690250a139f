//! Labels, with Kubernetes' syntax: a key is an optional DNS-subdomain
//! prefix and `/`, then a name of at most 63 characters (letters, digits,
//! `-`, `_`, `.`, beginning and ending with a letter or digit); a value is
//! empty or such a name. Their one-line form in the store (`k=v,k=v`),
//! which neither `,` nor `=` can break since neither may appear in a key
//! or a value. No I/O.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// A sandbox's labels, sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// No labels.
    pub fn new() -> Labels {
        Labels::default()
    }

    /// Set `key` to `value`, both checked.
    ///
    /// # Errors
    /// [`Error::InvalidName`] naming the key or the value and why.
    pub fn insert(&mut self, key: &str, value: &str) -> Result<()> {
        check_key(key)?;
        check_value(key, value)?;
        self.0.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// The value of `key`, if it is set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Every label, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The store's line value: `k=v` pairs joined by `,`, sorted by key.
    pub(crate) fn encode(&self) -> String {
        self.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Read [`encode`](Labels::encode)'s form; `None` if any pair is not a
    /// label (a damaged store line), or a key comes twice.
    pub(crate) fn decode(line: &str) -> Option<Labels> {
        let mut labels = Labels::new();
        if line.is_empty() {
            return Some(labels);
        }
        for pair in line.split(',') {
            let (k, v) = pair.split_once('=')?;
            if labels.get(k).is_some() {
                return None;
            }
            labels.insert(k, v).ok()?;
        }
        Some(labels)
    }
}

impl Labels {
    /// Labels of `pairs`, each checked as [`insert`](Labels::insert) does.
    ///
    /// # Errors
    /// [`Error::InvalidName`] naming the first bad key or value.
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Labels> {
        let mut labels = Labels::new();
        for (k, v) in pairs {
            labels.insert(k.as_ref(), v.as_ref())?;
        }
        Ok(labels)
    }
}

/// The longest name part of a key, and the longest value.
const NAME_MAX: usize = 63;
/// The longest prefix of a key (a DNS subdomain).
const PREFIX_MAX: usize = 253;

/// Check a label key: `[prefix/]name`.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let bad = |reason: String| Error::InvalidName {
        what: "label key",
        name: key.to_owned(),
        reason,
    };
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if p.is_empty() || p.len() > PREFIX_MAX {
            return Err(bad(format!(
                "its prefix must be 1 to {PREFIX_MAX} characters"
            )));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !p.split('.').all(label_ok) {
            return Err(bad(
                "its prefix must be a DNS subdomain (lowercase labels joined by '.')".into(),
            ));
        }
    }
    if name.is_empty() {
        return Err(bad("its name part is empty".into()));
    }
    check_name(name).map_err(|reason| bad(format!("its name part {reason}")))
}

/// Check the value of label `key`: empty, or a name.
pub(crate) fn check_value(key: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Ok(());
    }
    check_name(value).map_err(|reason| Error::InvalidName {
        what: "label value",
        name: value.to_owned(),
        reason: format!("the value of {key:?} {reason}"),
    })
}

/// At most 63 characters of letters, digits, `-`, `_`, `.`, beginning and
/// ending with a letter or digit; `Err` says what is wrong.
fn check_name(s: &str) -> std::result::Result<(), String> {
    if s.len() > NAME_MAX {
        return Err(format!("is longer than {NAME_MAX} characters"));
    }
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !edge_ok(s.bytes().next()) || !edge_ok(s.bytes().last()) {
        return Err("must begin and end with a letter or digit".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may hold only letters, digits, '-', '_' and '.'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_style_keys_and_values_are_labels() {
        let mut l = Labels::new();
        for (k, v) in [
            ("app", "web"),
            ("app.kubernetes.io/name", "my-app"),
            ("tier", ""),
            ("example.com/v1.2_x", "A.b-C_9"),
        ] {
            l.insert(k, v).unwrap();
        }
        assert_eq!(l.get("app"), Some("web"));
        assert_eq!(l.get("tier"), Some(""));
    }

    #[test]
    fn a_bad_key_or_value_is_refused_naming_it() {
        for (k, v) in [
            ("", "x"),
            ("-app", "x"),
            ("app-", "x"),
            ("a b", "x"),
            ("Example.com/app", "x"),
            ("/app", "x"),
            ("example.com/", "x"),
            ("app", "-x"),
            ("app", "x y"),
            ("app", "a=b"),
            ("app", "a,b"),
        ] {
            let err = Labels::new().insert(k, v).unwrap_err();
            let shown = err.to_string();
            assert!(
                shown.contains(if shown.contains("label key") { k } else { v }),
                "{shown}"
            );
        }
        let long = "a".repeat(64);
        assert!(Labels::new().insert(&long, "x").is_err());
        assert!(Labels::new().insert("app", &long).is_err());
    }

    #[test]
    fn the_store_form_round_trips_and_a_damaged_one_is_none() {
        let l = Labels::from_pairs([("app", "web"), ("tier", ""), ("x.io/k", "v")]).unwrap();
        assert_eq!(l.encode(), "app=web,tier=,x.io/k=v");
        assert_eq!(Labels::decode(&l.encode()), Some(l));
        assert_eq!(Labels::decode(""), Some(Labels::new()));
        for bad in ["app", "app=web,app=db", "=x", "app=web,", "a b=c"] {
            assert_eq!(Labels::decode(bad), None, "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_decodes_without_a_panic_and_what_decodes_round_trips(
            line in "\\PC{0,80}"
        ) {
            if let Some(l) = Labels::decode(&line) {
                proptest::prop_assert_eq!(Labels::decode(&l.encode()), Some(l));
            }
        }

        #[test]
        fn valid_labels_always_round_trip(
            pairs in proptest::collection::btree_map(
                "[a-z][a-z0-9-]{0,8}[a-z0-9]", "([A-Za-z0-9]([A-Za-z0-9._-]{0,8}[A-Za-z0-9])?)?", 0..6)
        ) {
            let l = Labels::from_pairs(&pairs).unwrap();
            proptest::prop_assert_eq!(Labels::decode(&l.encode()), Some(l));
        }
    }
}
