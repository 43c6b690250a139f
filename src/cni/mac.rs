//! MAC addresses in the text form CNI uses: six bytes, lowercase hex,
//! colon-separated (`aa:bb:cc:dd:ee:ff`).

/// Formats `mac` as `aa:bb:cc:dd:ee:ff`, the form results carry.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = *mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// Parses six two-digit hex bytes separated by `:` or all by `-`, in any
/// case (the 48-bit forms Go's `net.ParseMAC`, which the reference
/// plugins use, accepts). `None` for anything else.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let sep = if s.contains('-') { '-' } else { ':' };
    let mut out = [0u8; 6];
    let mut n = 0;
    for part in s.split(sep) {
        if n == 6 || part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        out[n] = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_lowercase_with_colons() {
        assert_eq!(
            format_mac(&[0xAA, 0x0b, 0, 1, 0xfe, 0xFF]),
            "aa:0b:00:01:fe:ff"
        );
    }

    #[test]
    fn parses_colons_and_dashes_in_any_case() {
        let want = Some([0xc2, 0x11, 0x22, 0x33, 0x44, 0x55]);
        assert_eq!(parse_mac("c2:11:22:33:44:55"), want);
        assert_eq!(parse_mac("C2-11-22-33-44-55"), want);
    }

    #[test]
    fn rejects_other_shapes() {
        for s in [
            "",
            "c2:11:22:33:44",
            "c2:11:22:33:44:55:66",
            "c2:11:22:33:44:5",
            "c2:11:22:33:44:555",
            "c2:11-22:33:44:55",
            "g2:11:22:33:44:55",
            "+2:11:22:33:44:55",
        ] {
            assert_eq!(parse_mac(s), None, "{s:?}");
        }
    }

    #[test]
    fn format_then_parse_is_identity() {
        let m = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
        assert_eq!(parse_mac(&format_mac(&m)), Some(m));
    }
}
