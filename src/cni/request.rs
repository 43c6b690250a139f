//! One invocation, whole: the environment, the configuration on stdin and
//! the version checks between them, in the order libcni's skel makes them.
//!
//! Order: the environment first (code 4), since without a verb nothing
//! else can be read; VERSION then answers without reading a
//! configuration; every other verb decodes stdin (6), checks `cniVersion`
//! (1 for an unsupported version, or for a verb the version predates),
//! and validates the configuration (2 or 7). Then the verb's own needs:
//! CHECK requires a `prevResult`, as the spec says runtimes send one and
//! the bridge plugin refuses CHECK without it; GC requires
//! `cni.dev/valid-attachments`, since reading its absence as "nothing is
//! valid" would release every attachment.

use std::ffi::OsString;

use super::config::NetConf;
use super::env::{Command, Env};
use super::error::CniError;
use super::result::CniResult;
use super::version::version_json;

/// A parsed, validated invocation.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// VERSION: print `reply` on stdout and exit 0.
    Version {
        /// The VERSION output ([`version_json`]).
        reply: String,
    },
    /// ADD, DEL, CHECK, GC or STATUS.
    Network(Box<NetworkRequest>),
}

/// A verb acting on a network: its environment and configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkRequest {
    /// The validated environment; `env.command` is the verb.
    pub env: Env,
    /// The validated configuration; `config.cni_version` is the version
    /// to answer in.
    pub config: NetConf,
    /// `prevResult`, read: always `Some` for CHECK; for ADD whenever one
    /// was given; for DEL only when it could be read, since DEL must
    /// succeed without one (SPEC.md: "Plugins should still return without
    /// error if prevResult is empty for a DEL command").
    pub prev_result: Option<CniResult>,
}

impl NetworkRequest {
    /// The static addresses asked for: `IP` in `CNI_ARGS`, `args.cni.ips`
    /// and `runtimeConfig.ips` (see [`NetConf::static_ips`]).
    ///
    /// # Errors
    /// Code 4 naming CNI_ARGS when its `IP` is not an address.
    pub fn static_ips(&self) -> Result<Vec<std::net::IpAddr>, CniError> {
        self.config.static_ips(self.env.arg("IP"))
    }

    /// The MAC asked for: `runtimeConfig.mac`, `args.cni.mac`, then `MAC`
    /// in `CNI_ARGS` (see [`NetConf::mac`]).
    ///
    /// # Errors
    /// Code 4 naming CNI_ARGS when its `MAC` is not a unicast MAC.
    pub fn mac(&self) -> Result<Option<[u8; 6]>, CniError> {
        self.config.mac(self.env.arg("MAC"))
    }
}

/// Parses an invocation from its environment variables and stdin.
///
/// # Errors
/// The first failure in the order of the module docs, with its spec code.
/// Print it with [`CniError::to_json`] at
/// [`crate::cni::version::requested`]`(stdin)`.
pub fn parse_request(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    stdin: &[u8],
) -> Result<Request, CniError> {
    let env = Env::from_vars(vars)?;
    if env.command == Command::Version {
        return Ok(Request::Version {
            reply: version_json(stdin),
        });
    }
    let config = NetConf::from_slice(stdin)?;
    config.cni_version.check_allows(env.command)?;
    let prev = config.prev_result.as_ref().map(CniResult::from_json);
    let prev_result = match (env.command, prev) {
        (Command::Check, None) => {
            return Err(CniError::missing_config(
                "prevResult",
                "CHECK needs the result of the ADD it checks",
            ))
        }
        (Command::Del, Some(Err(_))) => None,
        (Command::Gc | Command::Status, _) => None,
        (_, p) => p.transpose()?,
    };
    if env.command == Command::Gc && config.valid_attachments.is_none() {
        return Err(CniError::missing_config(
            "cni.dev/valid-attachments",
            "GC needs the list of attachments still valid (an empty list releases all)",
        ));
    }
    Ok(Request::Network(Box::new(NetworkRequest {
        env,
        config,
        prev_result,
    })))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn vars(cmd: &str) -> Vec<(OsString, OsString)> {
        [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ]
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
    }

    fn stdin(version: &str, extra: serde_json::Value) -> Vec<u8> {
        let mut v = json!({
            "cniVersion": version, "name": "n", "type": "podnet",
            "ipam": {"subnet": "10.88.0.0/16"}
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        serde_json::to_vec(&v).expect("json")
    }

    fn network(r: Result<Request, CniError>) -> NetworkRequest {
        match r.expect("valid request") {
            Request::Network(n) => *n,
            Request::Version { .. } => panic!("expected a network request"),
        }
    }

    fn code(r: Result<Request, CniError>) -> u32 {
        r.expect_err("invalid request").code
    }

    #[test]
    fn add_gives_env_and_config() {
        let n = network(parse_request(vars("ADD"), &stdin("1.1.0", json!({}))));
        assert_eq!(n.env.command, Command::Add);
        assert_eq!(n.config.name, "n");
        assert_eq!(n.prev_result, None);
    }

    #[test]
    fn cni_args_ip_and_mac_reach_the_request() {
        let mut v = vars("ADD");
        v.push((
            "CNI_ARGS".into(),
            "IgnoreUnknown=1;IP=10.88.0.9;MAC=02:00:00:00:00:09".into(),
        ));
        let n = network(parse_request(v, &stdin("0.4.0", json!({}))));
        assert_eq!(n.static_ips(), Ok(vec!["10.88.0.9".parse().expect("ip")]));
        assert_eq!(n.mac(), Ok(Some([2, 0, 0, 0, 0, 9])));
    }

    #[test]
    fn version_ignores_an_undecodable_stdin() {
        let r = parse_request(vars("VERSION"), b"\x00garbage").expect("VERSION never fails");
        assert!(matches!(r, Request::Version { reply } if reply.contains("supportedVersions")));
    }

    #[test]
    fn the_environment_is_checked_before_stdin() {
        let r = parse_request(vec![("CNI_COMMAND".into(), "ADD".into())], b"garbage");
        assert_eq!(code(r), 4);
    }

    #[test]
    fn garbage_stdin_is_code_6() {
        assert_eq!(code(parse_request(vars("ADD"), b"garbage")), 6);
    }

    #[test]
    fn an_unsupported_version_is_code_1() {
        assert_eq!(
            code(parse_request(vars("ADD"), &stdin("0.2.0", json!({})))),
            1
        );
    }

    #[test]
    fn check_with_a_0_3_1_config_is_code_1() {
        let s = stdin("0.3.1", json!({"prevResult": {}}));
        assert_eq!(code(parse_request(vars("CHECK"), &s)), 1);
    }

    #[test]
    fn gc_and_status_with_a_1_0_0_config_are_code_1() {
        for c in ["GC", "STATUS"] {
            let s = stdin("1.0.0", json!({"cni.dev/valid-attachments": []}));
            assert_eq!(code(parse_request(vars(c), &s)), 1, "{c}");
        }
    }

    #[test]
    fn check_without_prev_result_is_code_7() {
        assert_eq!(
            code(parse_request(vars("CHECK"), &stdin("1.1.0", json!({})))),
            7
        );
    }

    #[test]
    fn check_reads_the_prev_result() {
        let s = stdin(
            "0.4.0",
            json!({"prevResult": {"cniVersion": "0.4.0",
            "ips": [{"version": "4", "address": "10.88.0.5/16"}]}}),
        );
        let n = network(parse_request(vars("CHECK"), &s));
        assert_eq!(n.prev_result.map(|r| r.ips.len()), Some(1));
    }

    #[test]
    fn check_with_a_bad_prev_result_is_code_6() {
        let s = stdin("1.1.0", json!({"prevResult": {"ips": [{"address": 5}]}}));
        assert_eq!(code(parse_request(vars("CHECK"), &s)), 6);
    }

    #[test]
    fn del_with_a_bad_prev_result_still_parses() {
        let s = stdin("1.1.0", json!({"prevResult": {"ips": "garbage"}}));
        let n = network(parse_request(vars("DEL"), &s));
        assert_eq!(n.prev_result, None);
    }

    #[test]
    fn gc_without_valid_attachments_is_code_7() {
        assert_eq!(
            code(parse_request(vars("GC"), &stdin("1.1.0", json!({})))),
            7
        );
    }

    #[test]
    fn gc_with_an_empty_list_parses() {
        let s = stdin("1.1.0", json!({"cni.dev/valid-attachments": []}));
        let n = network(parse_request(vars("GC"), &s));
        assert_eq!(n.config.valid_attachments, Some(vec![]));
    }
}
