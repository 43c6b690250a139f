//! Typed reads from a decoded JSON object, each failure naming the field
//! by its path (`ipam.ranges[0][1].gateway`) and showing the value.
//!
//! The configuration reader reports a bad value as code 7 (invalid
//! network config), the result reader as code 6 (a prevResult that cannot
//! be decoded); [`Reader`] carries which. A JSON `null` reads as absent,
//! as Go's `encoding/json` leaves a field unset on `null`.

use std::net::IpAddr;
use std::str::FromStr;

use ipnetwork::IpNetwork;
use serde_json::{Map, Value};

use super::error::CniError;

/// The longest rendering of a bad value put in an error message.
const SHOWN_MAX: usize = 120;

/// Which code a bad value gets.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Reader {
    /// Code 7: the network configuration.
    Config,
    /// Code 6: a result being decoded (prevResult).
    Result,
}

/// `value` as JSON text, cut to [`SHOWN_MAX`] characters.
pub(crate) fn shown(value: &Value) -> String {
    let s = value.to_string();
    if s.chars().count() <= SHOWN_MAX {
        return s;
    }
    let mut cut: String = s.chars().take(SHOWN_MAX).collect();
    cut.push('…');
    cut
}

/// `path.key`, or `key` at the top.
pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Reader {
    /// The error for `path` holding `value`, `reason` saying what is valid.
    pub(crate) fn bad(self, path: &str, value: &Value, reason: impl Into<String>) -> CniError {
        match self {
            Reader::Config => CniError::invalid_config(path, shown(value), reason),
            Reader::Result => CniError::decode(format!("invalid {path}: {}", shown(value)), reason),
        }
    }

    /// The error for a required `path` that is absent.
    pub(crate) fn missing(self, path: &str) -> CniError {
        match self {
            Reader::Config => CniError::missing_config(path, ""),
            Reader::Result => CniError::decode(format!("{path} is missing"), ""),
        }
    }

    /// `value` as an object.
    pub(crate) fn object<'a>(
        self,
        path: &str,
        value: &'a Value,
    ) -> Result<&'a Map<String, Value>, CniError> {
        value
            .as_object()
            .ok_or_else(|| self.bad(path, value, "expected an object"))
    }

    /// `obj[key]`, `None` when absent or `null`.
    pub(crate) fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
        obj.get(key).filter(|v| !v.is_null())
    }

    /// An optional string.
    pub(crate) fn opt_str<'a>(
        self,
        obj: &'a Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Result<Option<&'a str>, CniError> {
        match Reader::get(obj, key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.bad(&join(path, key), v, "expected a string")),
        }
    }

    /// An optional boolean.
    pub(crate) fn opt_bool(
        self,
        obj: &Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Result<Option<bool>, CniError> {
        match Reader::get(obj, key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(&join(path, key), v, "expected true or false")),
        }
    }

    /// An optional non-negative integer no larger than `max`.
    pub(crate) fn opt_uint(
        self,
        obj: &Map<String, Value>,
        path: &str,
        key: &str,
        max: u64,
    ) -> Result<Option<u64>, CniError> {
        match Reader::get(obj, key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                _ => Err(self.bad(
                    &join(path, key),
                    v,
                    format!("expected an integer from 0 to {max}"),
                )),
            },
        }
    }

    /// An optional array.
    pub(crate) fn opt_array<'a>(
        self,
        obj: &'a Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Result<Option<&'a Vec<Value>>, CniError> {
        match Reader::get(obj, key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .map(Some)
                .ok_or_else(|| self.bad(&join(path, key), v, "expected a list")),
        }
    }

    /// An optional object.
    pub(crate) fn opt_object<'a>(
        self,
        obj: &'a Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Result<Option<&'a Map<String, Value>>, CniError> {
        match Reader::get(obj, key) {
            None => Ok(None),
            Some(v) => self.object(&join(path, key), v).map(Some),
        }
    }

    /// An optional list of strings (absent is empty).
    pub(crate) fn str_list(
        self,
        obj: &Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Result<Vec<String>, CniError> {
        let Some(items) = self.opt_array(obj, path, key)? else {
            return Ok(Vec::new());
        };
        let path = join(path, key);
        items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| self.bad(&format!("{path}[{i}]"), v, "expected a string"))
            })
            .collect()
    }

    /// `value` (at `path`) as an IP address string.
    pub(crate) fn ip(self, path: &str, value: &Value) -> Result<IpAddr, CniError> {
        value
            .as_str()
            .and_then(|s| IpAddr::from_str(s).ok())
            .ok_or_else(|| self.bad(path, value, "expected an IPv4 or IPv6 address"))
    }

    /// An optional IP address; `""` counts as absent (Go's `net.IP`
    /// unmarshals it to nil).
    pub(crate) fn opt_ip(
        self,
        obj: &Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Result<Option<IpAddr>, CniError> {
        match Reader::get(obj, key) {
            None => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(v) => self.ip(&join(path, key), v).map(Some),
        }
    }

    /// `value` (at `path`) as `ADDRESS/PREFIX`; host bits are kept
    /// (`10.1.0.5/16` is an address in a /16, as results carry them).
    pub(crate) fn cidr(self, path: &str, value: &Value) -> Result<IpNetwork, CniError> {
        value
            .as_str()
            .filter(|s| s.contains('/'))
            .and_then(|s| IpNetwork::from_str(s).ok())
            .ok_or_else(|| {
                self.bad(
                    path,
                    value,
                    "expected ADDRESS/PREFIX, e.g. 10.88.0.0/16 or fd00:88::/64",
                )
            })
    }

    /// A required `ADDRESS/PREFIX`.
    pub(crate) fn req_cidr(
        self,
        obj: &Map<String, Value>,
        path: &str,
        key: &str,
    ) -> Result<IpNetwork, CniError> {
        let path = join(path, key);
        match Reader::get(obj, key) {
            None => Err(self.missing(&path)),
            Some(v) => self.cidr(&path, v),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn config_values_are_code_7_and_result_values_code_6() {
        let m = obj(json!({"mtu": "big"}));
        assert_eq!(
            Reader::Config
                .opt_uint(&m, "", "mtu", 9)
                .map_err(|e| e.code),
            Err(7)
        );
        assert_eq!(
            Reader::Result
                .opt_uint(&m, "", "mtu", 9)
                .map_err(|e| e.code),
            Err(6)
        );
    }

    #[test]
    fn errors_name_the_path_and_the_value() {
        let m = obj(json!({"gw": "10.0.0.300"}));
        let e = Reader::Config
            .opt_ip(&m, "ipam.routes[0]", "gw")
            .expect_err("bad ip");
        assert!(
            e.msg.contains("ipam.routes[0].gw") && e.msg.contains("10.0.0.300"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn null_reads_as_absent() {
        let m = obj(json!({"a": null}));
        assert_eq!(Reader::Config.opt_str(&m, "", "a"), Ok(None));
    }

    #[test]
    fn a_cidr_needs_a_prefix() {
        assert!(Reader::Config.cidr("x", &json!("10.0.0.1")).is_err());
        assert!(Reader::Config.cidr("x", &json!("10.0.0.1/8")).is_ok());
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = Value::String("x".repeat(10_000));
        assert!(shown(&long).chars().count() <= SHOWN_MAX + 1);
    }
}
