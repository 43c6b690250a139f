//! Names podnet checks and derives: sandbox and pod names (DNS-1123
//! labels), interface names (IFNAMSIZ), the MTU range, and the stable hash
//! that derived names and the store's record checks use.

use crate::error::{Error, Result};

/// Longest interface name the kernel takes (IFNAMSIZ - 1).
pub(crate) const IFNAMSIZ_MAX: usize = 15;

/// Whether `mtu` is one the kernel takes for an Ethernet device.
pub(crate) fn check_mtu(mtu: u32) -> Result<()> {
    if (68..=65535).contains(&mtu) {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            reason: format!("MTU {mtu} is outside 68..=65535"),
        })
    }
}

/// Check an interface name the way the kernel's `dev_valid_name` does.
pub(crate) fn validate_ifname(what: &'static str, name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty".to_owned()
    } else if name.len() > IFNAMSIZ_MAX {
        format!("it is longer than {IFNAMSIZ_MAX} bytes (IFNAMSIZ)")
    } else if name == "." || name == ".." {
        "it is . or ..".to_owned()
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        "it holds '/', ':', a space or a control character".to_owned()
    } else {
        return Ok(());
    };
    invalid(what, name, reason)
}

/// `name`, a `what` name, refused for `reason`.
fn invalid(what: &'static str, name: &str, reason: String) -> Result<()> {
    Err(Error::InvalidName {
        what,
        name: name.to_owned(),
        reason,
    })
}

/// 64-bit FNV-1a: a stable hash for derived names and the checks of store
/// records (it detects any one changed byte; not for security).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(0xcbf2_9ce4_8422_2325, bytes)
}

/// FNV-1a 64 of `bytes` continued from the state `h` (`fnv1a(a ++ b)` is
/// `fnv1a_from(fnv1a(a), b)`).
pub(crate) fn fnv1a_from(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

/// Two base-36 characters derived from the bridge name.
pub(crate) fn tag(bridge: &str) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let h = fnv1a(bridge.as_bytes());
    // Both indexes are < 36.
    #[allow(clippy::cast_possible_truncation)]
    let (a, b) = ((h % 36) as usize, ((h / 36) % 36) as usize);
    [DIGITS[a] as char, DIGITS[b] as char].iter().collect()
}

/// A sandbox name is a DNS-1123 label short enough that `<name>-xx` fits
/// IFNAMSIZ.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    check_label("sandbox", name, IFNAMSIZ_MAX - 3)
}

/// A DNS alias of a sandbox is a DNS-1123 label.
pub(crate) fn validate_alias(name: &str) -> Result<()> {
    check_label("alias", name, 63)
}

/// Check that `name` is a DNS-1123 label of at most `max` characters;
/// `what` names the kind of name in the error.
pub(crate) fn check_label(what: &'static str, name: &str, max: usize) -> Result<()> {
    let reason = if name.is_empty() {
        "it is empty".to_owned()
    } else if name.len() > max {
        if what == "sandbox" {
            format!(
                "it is longer than {max} characters, so its interface name would not fit IFNAMSIZ"
            )
        } else {
            format!("it is longer than {max} characters")
        }
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        "it is not a DNS-1123 label: only a-z, 0-9 and '-' are allowed".to_owned()
    } else if name.starts_with('-') || name.ends_with('-') {
        "it is not a DNS-1123 label: it must start and end with a letter or digit".to_owned()
    } else {
        return Ok(());
    };
    invalid(what, name, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifnames_follow_the_kernel_rules() {
        assert!(validate_ifname("bridge", "podnet0").is_ok());
        assert!(validate_ifname("bridge", "a23456789012345").is_ok());
        for bad in ["", "a234567890123456", ".", "..", "a/b", "a:b", "a b"] {
            assert!(
                matches!(
                    validate_ifname("bridge", bad),
                    Err(Error::InvalidName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tags_are_stable_and_short() {
        assert_eq!(tag("podnet0"), tag("podnet0"));
        assert_eq!(tag("podnet0").len(), 2);
        assert_ne!(tag("podnet0"), tag("podnet1"));
    }

    #[test]
    fn names_are_dns_1123_labels_that_fit_ifnamsiz() {
        for ok in ["web", "a", "pod-1", "0a", "abcdefghijkl"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Web", "-a", "a-", "a_b", "a.b", "abcdefghijklm", "é"] {
            assert!(
                matches!(validate_name(bad), Err(Error::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    /// A DNS-1123 label of at most `max` characters, by the definition.
    fn is_label(s: &str, max: usize) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= max
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
    }

    proptest::proptest! {
        #[test]
        fn a_sandbox_name_is_valid_exactly_when_it_is_a_short_label(s in "\\PC{0,16}|[a-z0-9-]{0,14}") {
            proptest::prop_assert_eq!(validate_name(&s).is_ok(), is_label(&s, IFNAMSIZ_MAX - 3));
        }

        #[test]
        fn every_valid_sandbox_name_makes_a_valid_interface_name_on_any_bridge(
            name in "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?",
            bridge in "[a-zA-Z0-9_.-]{1,15}",
        ) {
            let t = tag(&bridge);
            proptest::prop_assert!(t.len() == 2 && t.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
            proptest::prop_assert!(validate_name(&name).is_ok());
            let host_end = format!("{name}-{t}");
            proptest::prop_assert!(validate_ifname("veth", &host_end).is_ok(), "{}", host_end);
        }

        #[test]
        fn an_accepted_interface_name_fits_ifnamsiz_and_has_no_separator(s in "\\PC{0,20}") {
            if validate_ifname("link", &s).is_ok() {
                proptest::prop_assert!(!s.is_empty() && s.len() <= IFNAMSIZ_MAX);
                proptest::prop_assert!(!s.contains(['/', ':']) && !s.chars().any(char::is_whitespace));
            }
        }

        #[test]
        fn the_hash_continues(a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
                              b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let whole = [a.clone(), b.clone()].concat();
            proptest::prop_assert_eq!(fnv1a(&whole), fnv1a_from(fnv1a(&a), &b));
        }
    }
}
