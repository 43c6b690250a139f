//! CNI specification versions: parsing, comparing, and which verbs exist
//! at which version.
//!
//! podnet speaks 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0: the versions whose
//! result has `interfaces` and `ips` lists (0.1.0 and 0.2.0 had `ip4`/`ip6`
//! and no engine in use still sends them). CHECK exists from 0.4.0, GC and
//! STATUS from 1.1.0. Codes follow libcni's skel (`pkg/skel/skel.go`): a
//! version string that does not parse is a decoding failure (6, as SPEC.md
//! lists "failed to decode version info from string" under 6), a parseable
//! version podnet does not speak is code 1, and a verb the configuration's
//! version predates is code 1 too ("config version does not allow CHECK").

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use super::env::Command;
use super::error::CniError;

/// A version number `MAJOR[.MINOR[.PATCH]]` as libcni's `ParseVersion`
/// reads it (missing parts are 0), ordered numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// The major number.
    pub major: u64,
    /// The minor number.
    pub minor: u64,
    /// The patch number.
    pub patch: u64,
}

impl Version {
    /// Parses `1`, `1.1` or `1.1.0`: one to three dot-separated decimal
    /// numbers, nothing else (no sign, no pre-release suffix).
    ///
    /// # Errors
    /// Code 6 when `s` is not such a version.
    pub fn parse(s: &str) -> Result<Version, CniError> {
        let bad = |why: &str| CniError::decode(format!("invalid CNI version {s:?}"), why);
        let mut parts = [0u64; 3];
        for (n, part) in s.split('.').enumerate() {
            let slot = parts.get_mut(n).ok_or_else(|| bad("too many parts"))?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("each part must be a decimal number"));
            }
            *slot = part.parse().map_err(|_| bad("a part is too large"))?;
        }
        Ok(Version {
            major: parts[0],
            minor: parts[1],
            patch: parts[2],
        })
    }
}

impl FromStr for Version {
    type Err = CniError;
    fn from_str(s: &str) -> Result<Version, CniError> {
        Version::parse(s)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A specification version podnet speaks.
///
/// Ordered oldest first, so `v >= SpecVersion::V0_4_0` asks "has CHECK".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpecVersion {
    /// 0.3.0: rich results, chaining.
    V0_3_0,
    /// 0.3.1: a typo fix of 0.3.0.
    V0_3_1,
    /// 0.4.0: CHECK, prevResult on DEL.
    V0_4_0,
    /// 1.0.0: no `version` in `ips`; no non-list configurations.
    V1_0_0,
    /// 1.1.0: GC and STATUS, `mtu` on interfaces (the current spec).
    V1_1_0,
}

/// The supported versions' strings, oldest first, as VERSION lists them.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version podnet implements: what it answers with when a request
/// names none it can use.
pub const CURRENT: SpecVersion = SpecVersion::V1_1_0;

impl SpecVersion {
    /// Every supported version, oldest first.
    pub const ALL: [SpecVersion; 5] = [
        SpecVersion::V0_3_0,
        SpecVersion::V0_3_1,
        SpecVersion::V0_4_0,
        SpecVersion::V1_0_0,
        SpecVersion::V1_1_0,
    ];

    /// The version as the spec writes it, e.g. `"0.4.0"`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpecVersion::V0_3_0 => "0.3.0",
            SpecVersion::V0_3_1 => "0.3.1",
            SpecVersion::V0_4_0 => "0.4.0",
            SpecVersion::V1_0_0 => "1.0.0",
            SpecVersion::V1_1_0 => "1.1.0",
        }
    }

    /// The version's number.
    pub fn version(self) -> Version {
        // The strings are constants of the form checked by the tests.
        let (major, minor, patch) = match self {
            SpecVersion::V0_3_0 => (0, 3, 0),
            SpecVersion::V0_3_1 => (0, 3, 1),
            SpecVersion::V0_4_0 => (0, 4, 0),
            SpecVersion::V1_0_0 => (1, 0, 0),
            SpecVersion::V1_1_0 => (1, 1, 0),
        };
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Reads a configuration's `cniVersion`. As libcni's reconciler does,
    /// a supported version must be written exactly (`"1.0"` is not
    /// `"1.0.0"`); an empty string means 0.1.0, as libcni's
    /// `DecodeVersion` says, and so is not supported.
    ///
    /// # Errors
    /// Code 6 when `s` does not parse as a version; code 1 when it does
    /// but podnet does not speak it (the details list what it speaks).
    pub fn parse(s: &str) -> Result<SpecVersion, CniError> {
        if let Some(v) = SpecVersion::ALL.into_iter().find(|v| v.as_str() == s) {
            return Ok(v);
        }
        let shown = if s.is_empty() { "0.1.0" } else { s };
        if !s.is_empty() {
            Version::parse(s)?;
        }
        Err(CniError::incompatible_version(
            "incompatible CNI versions",
            format!("config is {shown:?}, plugin supports {SUPPORTED:?}"),
        ))
    }

    /// Whether results at this version carry `"version": "4"|"6"` on each
    /// IP (0.3.x and 0.4.0; 1.0.0 dropped it).
    pub fn is_legacy_result(self) -> bool {
        self < SpecVersion::V1_0_0
    }

    /// Whether results at this version may carry an interface's `mtu`
    /// (added in 1.1.0: SPEC.md and libcni's `types/100` since commit
    /// c45adb6, "Add MTU to CNI result"; libcni 1.1's 1.0.0 `Interface`
    /// has no such field).
    pub fn has_interface_mtu(self) -> bool {
        self >= SpecVersion::V1_1_0
    }

    /// The first version that has `command`.
    pub fn introducing(command: Command) -> SpecVersion {
        match command {
            Command::Add | Command::Del | Command::Version => SpecVersion::V0_3_0,
            Command::Check => SpecVersion::V0_4_0,
            Command::Gc | Command::Status => SpecVersion::V1_1_0,
        }
    }

    /// Whether `command` exists at this version.
    pub fn allows(self, command: Command) -> bool {
        self >= SpecVersion::introducing(command)
    }

    /// Checks that `command` exists at this configuration version.
    ///
    /// # Errors
    /// Code 1, as skel: `config version does not allow CHECK`.
    pub fn check_allows(self, command: Command) -> Result<(), CniError> {
        if self.allows(command) {
            return Ok(());
        }
        Err(CniError::incompatible_version(
            format!("config version does not allow {}", command.as_str()),
            format!(
                "config is {:?}; {} needs {} or later",
                self.as_str(),
                command.as_str(),
                SpecVersion::introducing(command).as_str()
            ),
        ))
    }
}

impl fmt::Display for SpecVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SpecVersion {
    type Err = CniError;
    fn from_str(s: &str) -> Result<SpecVersion, CniError> {
        SpecVersion::parse(s)
    }
}

impl PartialEq<Version> for SpecVersion {
    fn eq(&self, other: &Version) -> bool {
        self.version() == *other
    }
}

impl PartialOrd<Version> for SpecVersion {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.version().cmp(other))
    }
}

/// The `cniVersion` a request asked for, to answer in: the stdin JSON's
/// `cniVersion` when it is a string naming a supported version, else
/// [`CURRENT`]. It never fails, so even an error about undecodable stdin
/// can be printed.
pub fn requested(stdin: &[u8]) -> &'static str {
    serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .and_then(|s| SpecVersion::parse(s).ok())
        })
        .unwrap_or(CURRENT)
        .as_str()
}

/// The VERSION verb's output:
/// `{"cniVersion":..,"supportedVersions":[..]}`.
///
/// `cniVersion` echoes the input's, as SPEC.md says ("the value of
/// `cniVersion` specified on input"), whatever it is, since VERSION is how
/// a runtime learns what to send; without one (stdin empty, not JSON, or
/// no string `cniVersion`) it is [`CURRENT`]. VERSION never fails.
pub fn version_json(stdin: &[u8]) -> String {
    let echoed = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| CURRENT.as_str().to_string());
    serde_json::json!({
        "cniVersion": echoed,
        "supportedVersions": SUPPORTED,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("valid version")
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(v("0.10.0") > v("0.4.0"));
        assert!(v("1.0.0") > v("0.99.99"));
        assert!(v("1.1.0") > v("1.0.9"));
    }

    #[test]
    fn missing_parts_are_zero() {
        assert_eq!(v("1"), v("1.0.0"));
        assert_eq!(v("0.4"), v("0.4.0"));
    }

    #[test]
    fn unparseable_versions_are_decode_failures() {
        for s in [
            "",
            "a.b.c",
            "1.2.3.4",
            "1..0",
            "+1.0.0",
            "-1",
            "1.0.0-rc1",
            " 1.0.0",
        ] {
            assert_eq!(Version::parse(s).map_err(|e| e.code), Err(6), "{s:?}");
        }
    }

    #[test]
    fn supported_strings_match_the_enum() {
        let strs: Vec<&str> = SpecVersion::ALL.iter().map(|v| v.as_str()).collect();
        assert_eq!(strs, SUPPORTED);
        for sv in SpecVersion::ALL {
            assert_eq!(v(sv.as_str()), sv.version());
        }
    }

    #[test]
    fn enum_order_is_version_order() {
        for w in SpecVersion::ALL.windows(2) {
            assert!(w[0] < w[1] && w[0].version() < w[1].version());
        }
    }

    #[test]
    fn every_supported_version_parses() {
        for s in SUPPORTED {
            assert_eq!(SpecVersion::parse(s).map(|v| v.as_str()), Ok(s));
        }
    }

    #[test]
    fn an_unsupported_version_is_code_1() {
        for s in ["0.1.0", "0.2.0", "2.0.0", "1.0", "1.2.0"] {
            assert_eq!(SpecVersion::parse(s).map_err(|e| e.code), Err(1), "{s}");
        }
    }

    #[test]
    fn an_empty_version_is_0_1_0_and_unsupported() {
        let e = SpecVersion::parse("").expect_err("0.1.0 is not supported");
        assert_eq!(e.code, 1);
        assert!(e.details.contains("0.1.0"), "{}", e.details);
    }

    #[test]
    fn a_garbage_version_is_code_6() {
        assert_eq!(SpecVersion::parse("latest").map_err(|e| e.code), Err(6));
    }

    #[test]
    fn only_1_1_0_results_carry_an_interface_mtu() {
        let with: Vec<SpecVersion> = SpecVersion::ALL
            .into_iter()
            .filter(|v| v.has_interface_mtu())
            .collect();
        assert_eq!(with, [SpecVersion::V1_1_0]);
    }

    #[test]
    fn check_needs_0_4_0() {
        assert!(!SpecVersion::V0_3_1.allows(Command::Check));
        assert!(SpecVersion::V0_4_0.allows(Command::Check));
    }

    #[test]
    fn gc_and_status_need_1_1_0() {
        for c in [Command::Gc, Command::Status] {
            assert!(!SpecVersion::V1_0_0.allows(c));
            assert!(SpecVersion::V1_1_0.allows(c));
        }
    }

    #[test]
    fn add_and_del_exist_at_every_version() {
        for sv in SpecVersion::ALL {
            assert!(sv.allows(Command::Add) && sv.allows(Command::Del));
        }
    }

    #[test]
    fn a_verb_older_than_the_config_is_code_1_naming_the_verb() {
        let e = SpecVersion::V0_4_0
            .check_allows(Command::Gc)
            .expect_err("GC is 1.1.0");
        assert_eq!(e.code, 1);
        assert!(e.msg.contains("GC"), "{}", e.msg);
    }

    #[test]
    fn version_output_echoes_the_input_version() {
        let out: serde_json::Value =
            serde_json::from_str(&version_json(br#"{"cniVersion":"0.4.0"}"#)).expect("json");
        assert_eq!(out["cniVersion"], "0.4.0");
        assert_eq!(
            out["supportedVersions"],
            serde_json::json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }

    #[test]
    fn version_output_without_input_says_current() {
        let out: serde_json::Value = serde_json::from_str(&version_json(b"")).expect("json");
        assert_eq!(out["cniVersion"], "1.1.0");
    }

    #[test]
    fn requested_version_falls_back_to_current() {
        assert_eq!(requested(br#"{"cniVersion":"0.3.1"}"#), "0.3.1");
        assert_eq!(requested(br#"{"cniVersion":"9.9.9"}"#), "1.1.0");
        assert_eq!(requested(b"\xff garbage"), "1.1.0");
    }
}
