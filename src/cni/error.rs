//! The CNI error result: a spec code, a short message and details.
//!
//! SPEC.md section 5 ("Error") reserves codes 0–99; a plugin prints the
//! error as JSON on stdout and exits non-zero. The constructors here are
//! one per reserved code, so a call site says which rule was broken.

use std::fmt;

/// An error as the CNI specification reports it.
///
/// `Display` gives `msg`, then `; details` when there are details, as
/// libcni's `types.Error` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The spec's numeric code (1–99 reserved, 100 and up plugin-specific).
    pub code: u32,
    /// A short message characterising the error.
    pub msg: String,
    /// A longer description; empty when there is nothing to add.
    pub details: String,
}

impl CniError {
    /// Code 1: the configuration's `cniVersion` is not one podnet speaks.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Code 2: a field of the network configuration is not supported.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Code 3: the container is unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Code 4: an environment variable is missing or malformed.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// Code 5: an I/O failure, such as reading stdin.
    pub const IO_FAILURE: u32 = 5;
    /// Code 6: content could not be decoded (JSON, a version string).
    pub const DECODING_FAILURE: u32 = 6;
    /// Code 7: the network configuration is invalid.
    pub const INVALID_CONFIG: u32 = 7;
    /// Code 11: a transient condition; the runtime should retry later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Code 50 (STATUS): the plugin cannot service ADD requests.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Code 51 (STATUS): not available, and existing containers may have
    /// limited connectivity.
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// The first plugin-specific code; see [`CniError::plugin`].
    pub const PLUGIN_BASE: u32 = 100;
    /// Code 999: an internal error, the code libcni's skel uses for a
    /// plugin's untyped failure.
    pub const INTERNAL: u32 = 999;

    /// An error with any code.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// Code 1: `version` is not supported; `details` lists what is.
    pub fn incompatible_version(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::INCOMPATIBLE_VERSION, msg, details)
    }

    /// Code 2: the configuration's `field` has a value podnet does not
    /// support. The spec requires the message to hold the key and value.
    pub fn unsupported_field(
        field: &str,
        value: impl fmt::Display,
        details: impl Into<String>,
    ) -> CniError {
        CniError::new(
            CniError::UNSUPPORTED_FIELD,
            format!("unsupported field {field}: {value}"),
            details,
        )
    }

    /// Code 3: the container is unknown; the runtime need not clean up.
    pub fn unknown_container(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::UNKNOWN_CONTAINER, msg, details)
    }

    /// Code 4: environment variable `var` is invalid. The message names
    /// the variable, as the spec requires; `details` says why.
    pub fn invalid_env(var: &str, details: impl Into<String>) -> CniError {
        CniError::new(
            CniError::INVALID_ENVIRONMENT,
            format!("invalid environment variable {var}"),
            details,
        )
    }

    /// Code 4: the listed required environment variables are missing
    /// (unset or empty).
    pub fn missing_env(vars: &[&str]) -> CniError {
        CniError::new(
            CniError::INVALID_ENVIRONMENT,
            format!(
                "required environment variables [{}] missing",
                vars.join(",")
            ),
            "",
        )
    }

    /// Code 5: an I/O failure.
    pub fn io(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::IO_FAILURE, msg, details)
    }

    /// Code 6: content could not be decoded.
    pub fn decode(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::DECODING_FAILURE, msg, details)
    }

    /// Code 7: configuration `field` has the invalid `value`; `reason`
    /// says what a valid one is. The message names field and value.
    pub fn invalid_config(
        field: &str,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> CniError {
        CniError::new(
            CniError::INVALID_CONFIG,
            format!("invalid network config {field}: {value}"),
            reason,
        )
    }

    /// Code 7: configuration `field` is required but absent.
    pub fn missing_config(field: &str, details: impl Into<String>) -> CniError {
        CniError::new(
            CniError::INVALID_CONFIG,
            format!("invalid network config: {field} is missing"),
            details,
        )
    }

    /// Code 11: try again later.
    pub fn try_again(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::TRY_AGAIN_LATER, msg, details)
    }

    /// Code 50 (STATUS): the plugin cannot service ADD requests.
    pub fn not_available(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::NOT_AVAILABLE, msg, details)
    }

    /// Code 51 (STATUS): not available, and existing containers in the
    /// network may have limited connectivity.
    pub fn limited_connectivity(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::LIMITED_CONNECTIVITY, msg, details)
    }

    /// A plugin-specific error: code [`CniError::PLUGIN_BASE`] + `offset`,
    /// so it can never collide with a reserved code.
    pub fn plugin(offset: u16, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::PLUGIN_BASE + u32::from(offset), msg, details)
    }

    /// Code 999: an internal error (a bug, or a failure with no better
    /// code).
    pub fn internal(msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError::new(CniError::INTERNAL, msg, details)
    }

    /// The error result JSON: `{"cniVersion":..,"code":..,"msg":..,"details":..}`,
    /// `details` left out when empty (as libcni's `omitempty`).
    ///
    /// `cni_version` is the version in use: the request's `cniVersion`
    /// when it could be read ([`crate::cni::version::requested`] finds it).
    /// A plugin prints it on **stdout** and exits non-zero: libcni's
    /// `RawExec` decodes the error from stdout and only falls back to
    /// stderr's text when stdout is empty.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut out = serde_json::Map::new();
        out.insert("cniVersion".into(), cni_version.into());
        out.insert("code".into(), self.code.into());
        out.insert("msg".into(), self.msg.as_str().into());
        if !self.details.is_empty() {
            out.insert("details".into(), self.details.as_str().into());
        }
        serde_json::Value::Object(out).to_string()
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.details.is_empty() {
            write!(f, "{}", self.msg)
        } else {
            write!(f, "{}; {}", self.msg, self.details)
        }
    }
}

impl std::error::Error for CniError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(e: &CniError, v: &str) -> serde_json::Value {
        serde_json::from_str(&e.to_json(v)).expect("error JSON parses")
    }

    #[test]
    fn json_has_the_spec_keys() {
        let e = CniError::invalid_config("mtu", 0, "an MTU is 1 to 65535");
        let j = parsed(&e, "1.1.0");
        assert_eq!(j["cniVersion"], "1.1.0");
        assert_eq!(j["code"], 7);
        assert_eq!(j["msg"], "invalid network config mtu: 0");
        assert_eq!(j["details"], "an MTU is 1 to 65535");
    }

    #[test]
    fn json_omits_empty_details() {
        let e = CniError::missing_env(&["CNI_COMMAND"]);
        let j = parsed(&e, "0.4.0");
        assert!(j.get("details").is_none(), "{j}");
    }

    #[test]
    fn json_escapes_quotes_in_messages() {
        let e = CniError::invalid_env("CNI_IFNAME", "value \"a\\b\"");
        assert_eq!(parsed(&e, "1.0.0")["details"], "value \"a\\b\"");
    }

    #[test]
    fn invalid_env_names_the_variable() {
        assert!(CniError::invalid_env("CNI_ARGS", "x")
            .msg
            .contains("CNI_ARGS"));
    }

    #[test]
    fn missing_env_lists_every_variable() {
        let e = CniError::missing_env(&["CNI_CONTAINERID", "CNI_IFNAME"]);
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_CONTAINERID,CNI_IFNAME"), "{}", e.msg);
    }

    #[test]
    fn plugin_codes_start_at_100() {
        assert_eq!(CniError::plugin(0, "m", "").code, 100);
        assert_eq!(CniError::plugin(u16::MAX, "m", "").code, 100 + 65535);
    }

    #[test]
    fn reserved_constructors_carry_their_codes() {
        let codes = [
            CniError::incompatible_version("", "").code,
            CniError::unsupported_field("f", "v", "").code,
            CniError::unknown_container("", "").code,
            CniError::invalid_env("V", "").code,
            CniError::io("", "").code,
            CniError::decode("", "").code,
            CniError::invalid_config("f", "v", "").code,
            CniError::try_again("", "").code,
            CniError::not_available("", "").code,
            CniError::limited_connectivity("", "").code,
        ];
        assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7, 11, 50, 51]);
    }

    #[test]
    fn display_joins_msg_and_details() {
        assert_eq!(
            CniError::io("read stdin", "EIO").to_string(),
            "read stdin; EIO"
        );
        assert_eq!(CniError::io("read stdin", "").to_string(), "read stdin");
    }

    #[test]
    fn unsupported_field_names_key_and_value() {
        let e = CniError::unsupported_field("ipam.type", "\"dhcp\"", "");
        assert!(
            e.msg.contains("ipam.type") && e.msg.contains("dhcp"),
            "{}",
            e.msg
        );
    }
}
